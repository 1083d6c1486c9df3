// The CUDA backend: construction, memory and errors (the class: runtime/cuda_backend.h).
#ifdef SPECD_HAVE_CUDA

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/cuda_backend.h"

namespace specd::cuda_detail {

CudaBackend::CudaBackend()
    : pool_(std::make_shared<DevicePool>(kPoolMaxCached)), arena_(std::make_shared<SharedArena>()) {
  cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
  // A fixed workspace: cuBLAS must not allocate inside a graph capture.
  cudaMalloc(&blas_ws_, kBlasWorkspace);
  lt_ = std::make_unique<LtGemm>(blas_ws_, kBlasWorkspace);
  cudaEventCreateWithFlags(&staged_, cudaEventDisableTiming);
  ApplyOptions();
}

CudaBackend::~CudaBackend() {
  cudaStreamSynchronize(stream_);
  (void)FinishUploads();
  DropGraphs("");
  if (pinned_) cudaFreeHost(pinned_);
  cudaFree(blas_ws_);
  cudaEventDestroy(staged_);
  cudaStreamDestroy(stream_);
}

Tensor CudaBackend::Alloc(DType dtype, std::vector<int64_t> shape) {
  Tensor t = Empty(dtype, std::move(shape));
  Check(cudaMemsetAsync(t.data, 0, t.nbytes(), stream_), "memset");
  return t;
}

Tensor CudaBackend::Empty(DType dtype, std::vector<int64_t> shape) {
  Tensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.device = Device::kCuda;
  const size_t bytes = std::max<size_t>(t.nbytes(), 1);
  CountAllocation();
  void* p = nullptr;
  if (capturing_) {
    // The graphs' shared workspace: blocks a capture frees are reused by its later ops and by
    // other graphs' captures, never by op-by-op work (which would race a replay).
    auto arena = arena_;
    {
      std::lock_guard<std::mutex> g(arena->mu);
      p = arena->arena.Get(bytes);
    }
    if (p == nullptr) {
      NoteAllocFailure();
      throw std::bad_alloc();
    }
    t.owner = std::shared_ptr<void>(p, [arena](void* q) {
      std::lock_guard<std::mutex> g(arena->mu);
      arena->arena.Put(q);
    });
  } else {
    size_t bucket = 0;
    p = pool_->Get(bytes, &bucket);
    if (p == nullptr) {
      ReleaseCachedMemory();
      p = pool_->Get(bytes, &bucket);
    }
    if (p == nullptr) {
      NoteAllocFailure();
      throw std::bad_alloc();
    }
    auto pool = pool_;
    t.owner = std::shared_ptr<void>(p, [pool, bucket](void* q) { pool->Put(q, bucket); });
  }
  t.data = p;
  return t;
}

Tensor CudaBackend::Upload(const void* src, DType src_dtype, std::vector<int64_t> shape, DType dst_dtype) {
  Tensor t = Alloc(dst_dtype, std::move(shape));
  const int64_t n = t.numel();
  std::vector<uint16_t> b16;
  std::vector<float> f32;
  const void* from = src;
  if (src_dtype != dst_dtype) {
    if (dst_dtype == DType::kBF16 && src_dtype == DType::kF32) {
      b16.resize(n);
      const float* s = static_cast<const float*>(src);
      for (int64_t i = 0; i < n; ++i) b16[i] = F32ToBf16(s[i]);
      from = b16.data();
    } else if (dst_dtype == DType::kF32 && (src_dtype == DType::kBF16 || src_dtype == DType::kF16)) {
      f32.resize(n);
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) f32[i] = src_dtype == DType::kBF16 ? Bf16ToF32(s[i]) : F16ToF32(s[i]);
      from = f32.data();
    } else {
      throw std::invalid_argument("cuda Upload: unsupported conversion");
    }
  }
  Check(cudaMemcpyAsync(t.data, from, t.nbytes(), cudaMemcpyHostToDevice, stream_), "upload");
  Check(cudaStreamSynchronize(stream_), "upload sync");  // host buffers die with this scope
  return t;
}

void CudaBackend::UploadInto(Tensor& dst, int64_t offset, const void* src, DType src_dtype, int64_t n) {
  if (offset < 0 || n < 0 || offset + n > dst.numel()) throw std::invalid_argument("UploadInto: out of the tensor");
  const DType to = dst.dtype;
  const bool same = src_dtype == to;
  if (!same && !(to == DType::kBF16 && (src_dtype == DType::kF32 || src_dtype == DType::kF16)) &&
      !(to == DType::kF32 && (src_dtype == DType::kBF16 || src_dtype == DType::kF16))) {
    throw std::invalid_argument("cuda UploadInto: unsupported conversion");
  }
  const size_t in_size = DTypeSize(src_dtype), out_size = DTypeSize(to);
  const auto* s = static_cast<const unsigned char*>(src);
  char* d = static_cast<char*>(dst.data) + static_cast<size_t>(offset) * out_size;
  const int64_t per_chunk = static_cast<int64_t>(kLoadStageBytes / out_size);
  for (int64_t done = 0; done < n;) {
    const int64_t m = std::min(n - done, per_chunk);
    LoadStage& st = load_stages_[next_load_stage_];
    next_load_stage_ ^= 1;
    if (st.buf == nullptr && !load_unpinned_) {
      // Pinned memory may be refused (memlock limits): then each chunk goes from the heap,
      // synchronously, which is slower but loads the same bytes.
      if (cudaHostAlloc(&st.buf, kLoadStageBytes, cudaHostAllocDefault) != cudaSuccess ||
          cudaEventCreateWithFlags(&st.copied, cudaEventDisableTiming) != cudaSuccess) {
        cudaGetLastError();
        if (st.buf != nullptr) cudaFreeHost(st.buf);
        st = LoadStage{};
        load_unpinned_ = true;
      }
    } else if (st.buf != nullptr) {
      Check(cudaEventSynchronize(st.copied), "load staging reuse");  // its previous copy is done
    }
    std::vector<unsigned char> heap;
    void* buf = st.buf;
    if (buf == nullptr) {
      heap.resize(static_cast<size_t>(m) * out_size);
      buf = heap.data();
    }
    const unsigned char* from = s + static_cast<size_t>(done) * in_size;
    if (same) {
      // Several threads: one core's memcpy out of the page cache is slower than the copy engine.
      const int64_t bytes = m * static_cast<int64_t>(out_size), piece = int64_t{4} << 20;
#pragma omp parallel for schedule(static) if (bytes > 2 * piece)
      for (int64_t o = 0; o < bytes; o += piece) {
        std::memcpy(static_cast<char*>(buf) + o, from + o, static_cast<size_t>(std::min(piece, bytes - o)));
      }
    } else {
      // Elements read through memcpy: checkpoint data need not be aligned.
#pragma omp parallel for schedule(static) if (m > (1 << 20))
      for (int64_t i = 0; i < m; ++i) {
        float f;
        if (src_dtype == DType::kF32) {
          std::memcpy(&f, from + 4 * i, 4);
        } else {
          uint16_t h;
          std::memcpy(&h, from + 2 * i, 2);
          f = src_dtype == DType::kBF16 ? Bf16ToF32(h) : F16ToF32(h);
        }
        if (to == DType::kBF16) {
          static_cast<uint16_t*>(buf)[i] = F32ToBf16(f);
        } else {
          static_cast<float*>(buf)[i] = f;
        }
      }
    }
    Check(cudaMemcpyAsync(d + static_cast<size_t>(done) * out_size, buf, static_cast<size_t>(m) * out_size,
                          cudaMemcpyHostToDevice, stream_),
          "load copy");
    if (st.buf != nullptr) {
      Check(cudaEventRecord(st.copied, stream_), "load copy event");
    } else {
      Check(cudaStreamSynchronize(stream_), "load copy sync");  // `heap` dies with this iteration
    }
    done += m;
  }
}

Status CudaBackend::FinishUploads() {
  Status result = Status::Ok();
  for (LoadStage& st : load_stages_) {
    if (st.buf == nullptr) continue;
    const cudaError_t e = cudaEventSynchronize(st.copied);
    if (e != cudaSuccess && result.ok()) result = Internal("cuda weight upload: {}", cudaGetErrorString(e));
    cudaEventDestroy(st.copied);
    cudaFreeHost(st.buf);
    st = LoadStage{};
  }
  next_load_stage_ = 0;
  load_unpinned_ = false;
  return result;
}

std::vector<float> CudaBackend::DownloadF32(const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  if (t.dtype == DType::kF32) {
    Check(cudaMemcpyAsync(out.data(), t.data, t.nbytes(), cudaMemcpyDeviceToHost, stream_), "download");
    Check(cudaStreamSynchronize(stream_), "download sync");
  } else if (t.dtype == DType::kBF16) {
    std::vector<uint16_t> b(out.size());
    Check(cudaMemcpyAsync(b.data(), t.data, t.nbytes(), cudaMemcpyDeviceToHost, stream_), "download");
    Check(cudaStreamSynchronize(stream_), "download sync");
    for (size_t i = 0; i < out.size(); ++i) out[i] = Bf16ToF32(b[i]);
  } else {
    throw std::invalid_argument("DownloadF32 of a non-float tensor");
  }
  return out;
}

void CudaBackend::CopyRows(const Tensor& src, Tensor& dst) {
  if (src.nbytes() != dst.nbytes()) throw std::invalid_argument("CopyRows: size mismatch");
  Check(cudaMemcpyAsync(dst.data, src.data, src.nbytes(), cudaMemcpyDeviceToDevice, stream_), "copy");
}

Tensor CudaBackend::Random(DType dtype, std::vector<int64_t> shape, float scale, float offset, uint64_t seed) {
  Tensor t = Alloc(dtype, std::move(shape));
  Check(K::RandomNormal(t.data, dtype == DType::kBF16, t.numel(), scale, offset, seed, stream_), "random");
  return t;
}

Status CudaBackend::TakeError() {
  Status s = error_;
  error_ = Status::Ok();
  return s;
}

void CudaBackend::Check(cudaError_t e, const char* what) {
  if (e != cudaSuccess && error_.ok()) {
    error_ = Internal("cuda {}: {}", what, cudaGetErrorString(e));
  }
}

Tensor CudaBackend::View(void* p, DType dt, std::vector<int64_t> shape) {
  Tensor t;
  t.dtype = dt;
  t.shape = std::move(shape);
  t.device = Device::kCuda;
  t.data = p;
  return t;
}

}  // namespace specd::cuda_detail

namespace specd {

using cuda_detail::CudaBackend;

int CudaDeviceCountImpl() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

StatusOr<std::unique_ptr<Backend>> MakeCudaBackend() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    return Status(StatusCode::kUnavailable,
                  fmt::format("no CUDA device available ({})", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices"));
  }
  return std::unique_ptr<Backend>(new CudaBackend());
}

}  // namespace specd

#endif  // SPECD_HAVE_CUDA
