// Device memory helpers of the CUDA backend: the size-bucketed block pool, the graphs' shared
// workspace, and the pinned host buffer for asynchronous uploads. Internal to runtime/cuda_*.cpp.
#pragma once
#ifdef SPECD_HAVE_CUDA

#include <cuda_runtime.h>

#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "runtime/graph_memory.h"

namespace specd::cuda_detail {

// Size-bucketed cache of device blocks: a forward allocates the same shapes every step, and
// cudaMalloc/cudaFree synchronise the device. Under a server's traffic the sizes are not the
// same every step (prefill chunks of any length, logits of any number of rows), so buckets past
// 1 MiB are geometric (8 per octave: at most 12.5 % slack) and the bytes held in the cache are
// capped: a cache keyed by exact sizes grew by gigabytes as new row counts kept arriving.
class DevicePool {
 public:
  explicit DevicePool(size_t max_cached) : max_cached_(max_cached) {}
  ~DevicePool() { Trim(); }
  // nullptr when the device has no room even after the cached blocks went back.
  void* Get(size_t bytes, size_t* bucket) {
    *bucket = Bucket(bytes);
    std::lock_guard<std::mutex> g(mu_);
    auto& v = free_[*bucket];
    if (!v.empty()) {
      void* p = v.back();
      v.pop_back();
      cached_ -= *bucket;
      return p;
    }
    void* p = nullptr;
    if (cudaMalloc(&p, *bucket) != cudaSuccess) {
      cudaGetLastError();  // an allocation failure is not sticky: clear it
      TrimLocked(0);
      if (cudaMalloc(&p, *bucket) != cudaSuccess) {
        cudaGetLastError();
        return nullptr;
      }
    }
    return p;
  }
  void Put(void* p, size_t bucket) {
    std::lock_guard<std::mutex> g(mu_);
    free_[bucket].push_back(p);
    cached_ += bucket;
    // Over the cap: give the largest cached blocks back until half of it is left (each cudaFree
    // waits for the device, so trim in one go, rarely).
    if (cached_ > max_cached_) TrimLocked(max_cached_ / 2);
  }
  void Trim() {
    std::lock_guard<std::mutex> g(mu_);
    TrimLocked(0);
  }
  size_t cached_bytes() const {
    std::lock_guard<std::mutex> g(mu_);
    return cached_;
  }
  static size_t Bucket(size_t b) {
    if (b <= 256) return 256;
    // Powers of two up to 1 MiB; then 8 steps per octave up to 256 MiB; past that (weights, KV
    // pools: allocated once) 2 MiB granules, so big tensors waste little.
    if (b <= (size_t{1} << 20)) {
      size_t s = 256;
      while (s < b) s <<= 1;
      return s;
    }
    if (b <= (size_t{256} << 20)) {
      size_t octave = size_t{1} << 20;
      while (octave * 2 < b) octave <<= 1;
      const size_t step = octave / 8;
      return (b + step - 1) / step * step;
    }
    return (b + (size_t{2} << 20) - 1) / (size_t{2} << 20) * (size_t{2} << 20);
  }

 private:
  // Frees cached blocks, largest first, until at most `keep` bytes stay cached.
  void TrimLocked(size_t keep) {
    for (auto it = free_.rbegin(); it != free_.rend() && cached_ > keep; ++it) {
      auto& l = it->second;
      while (!l.empty() && cached_ > keep) {
        cudaFree(l.back());
        l.pop_back();
        cached_ -= it->first;
      }
    }
  }
  mutable std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
  const size_t max_cached_;
};

// The shared workspace of every captured graph (runtime/graph_memory.h) with the lock that
// tensor deleters need (a tensor may die on another thread than the one that captured).
struct SharedArena {
  SharedArena()
      : arena(
            [](size_t n) -> void* {
              void* p = nullptr;
              if (cudaMalloc(&p, n) != cudaSuccess) {
                cudaGetLastError();
                return nullptr;
              }
              return p;
            },
            [](void* p) { cudaFree(p); }, size_t{64} << 20) {}
  std::mutex mu;
  GraphArena arena;
};

// Host data copied to the device without waiting: through a pinned buffer, so the copy is
// asynchronous; the previous copy must have left the buffer before it is rewritten.
class PinnedStager {
 public:
  ~PinnedStager() {
    if (event_) cudaEventDestroy(event_);
    if (pinned_) cudaFreeHost(pinned_);
  }
  cudaError_t Copy(const void* src, size_t bytes, void* dst, cudaStream_t s) {
    cudaError_t e = cudaSuccess;
    if (event_ == nullptr) {
      e = cudaEventCreateWithFlags(&event_, cudaEventDisableTiming);
    } else {
      e = cudaEventSynchronize(event_);
    }
    if (e != cudaSuccess) return e;
    if (bytes > bytes_) {
      if (pinned_) cudaFreeHost(pinned_);
      pinned_ = nullptr;
      bytes_ = 0;
      if ((e = cudaMallocHost(&pinned_, bytes)) != cudaSuccess) return e;
      bytes_ = bytes;
    }
    std::memcpy(pinned_, src, bytes);
    if ((e = cudaMemcpyAsync(dst, pinned_, bytes, cudaMemcpyHostToDevice, s)) != cudaSuccess) return e;
    return cudaEventRecord(event_, s);
  }

 private:
  void* pinned_ = nullptr;
  size_t bytes_ = 0;
  cudaEvent_t event_ = nullptr;
};

}  // namespace specd::cuda_detail

#endif  // SPECD_HAVE_CUDA
