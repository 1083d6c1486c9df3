// Token choice on the device, so a speculative step copies ids, not [rows, V] fp32 logits.
//
// Row argmax with the host rule exactly (speculative/sampling.cpp ArgmaxF: a left-to-right scan with a
// strict `>`): the lowest id of the row's maximum; NaN never wins, except that a NaN at id 0
// makes every comparison false and ArgmaxF returns 0. Comparisons run on integer keys of the
// float bits, not on floats: this file is built with --use_fast_math (flush-to-zero compares
// would make distinct denormals equal) and the keys make -0 == +0 as the host's `>` does.
//
// Two passes, because one block per row leaves most SMs idle at verify sizes (R = 9 rows = 9
// blocks): pass 1 splits every row over `splits` blocks (grid splits x R) that each reduce
// their chunk to one packed (key, id) candidate; pass 2 reduces a row's candidates with one warp.
// At V = 248,320 a row is 0.99 MB, so R = 9 streams 8.9 MB: ~2 us at the H200's ~4.8 TB/s,
// about 5 us with both launches; R = 1 and R = 33 about 4 us and 10 us.
#include <cstdint>

#include "common.cuh"
#include "specd/kernels.h"

namespace specd::kernels {
namespace {

constexpr int kArgmaxThreads = 256;
// A pass-1 block covers at least this many elements, so its loads stay in flight long enough.
constexpr int64_t kMinChunk = 2048;
// Target pass-1 blocks per launch: a few waves of the H100/H200's 132 SMs.
constexpr int64_t kTargetBlocks = 512;

// A monotone map of floats to uint32 (x < y <=> key(x) < key(y)); -0 maps with +0 and NaN to 0,
// below the key of -inf, so NaN loses to every number.
__device__ __forceinline__ uint32_t OrderKey(float x) {
  uint32_t b = __float_as_uint(x);
  if ((b & 0x7fffffffu) > 0x7f800000u) return 0u;  // NaN
  if (b == 0x80000000u) b = 0u;                    // -0 -> +0
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// (key, id) packed so that the larger uint64 is the better candidate: higher key, then lower id.
__device__ __forceinline__ uint64_t Pack(uint32_t key, uint32_t id) {
  return (static_cast<uint64_t>(key) << 32) | static_cast<uint64_t>(0xffffffffu - id);
}
__device__ __forceinline__ uint32_t UnpackId(uint64_t p) { return 0xffffffffu - static_cast<uint32_t>(p); }

__device__ __forceinline__ uint64_t WarpMaxU64(uint64_t v) {
  for (int o = 16; o > 0; o >>= 1) {
    const uint64_t w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

// Pass 1: block (c, r) reduces elements [c*chunk, min((c+1)*chunk, V)) of row r to part[r, c].
// chunk is a multiple of 4; with kVec the row base is 16-byte aligned (V % 4 == 0, aligned base).
template <bool kVec>
__global__ void __launch_bounds__(kArgmaxThreads)
    ArgmaxPartialK(const float* __restrict__ logits, int64_t V, int64_t chunk, uint64_t* __restrict__ part) {
  __shared__ uint64_t red[kArgmaxThreads / 32];
  const int64_t r = blockIdx.y;
  const float* row = logits + r * V;
  const int64_t lo = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t hi = lo + chunk < V ? lo + chunk : V;
  uint64_t best = 0;  // below every real candidate: a real one has id <= V - 1 < 0xffffffff
  if (kVec) {
    // Each thread reads float4s at lo + 4*(tid + k*threads); ids within a float4 rise, so a
    // strict compare keeps the first of equal keys within the thread and Pack orders the rest.
    for (int64_t i = lo + 4 * static_cast<int64_t>(threadIdx.x); i < hi; i += 4 * kArgmaxThreads) {
      const float4 v = *reinterpret_cast<const float4*>(row + i);
      const float e[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint64_t c = Pack(OrderKey(e[j]), static_cast<uint32_t>(i + j));
        best = c > best ? c : best;
      }
    }
  } else {
    for (int64_t i = lo + threadIdx.x; i < hi; i += kArgmaxThreads) {
      const uint64_t c = Pack(OrderKey(row[i]), static_cast<uint32_t>(i));
      best = c > best ? c : best;
    }
  }
  best = WarpMaxU64(best);
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  if (lane == 0) red[wid] = best;
  __syncthreads();
  if (wid == 0) {
    uint64_t v = lane < kArgmaxThreads / 32 ? red[lane] : 0;
    v = WarpMaxU64(v);
    if (lane == 0) part[r * gridDim.x + blockIdx.x] = v;
  }
}

// Pass 2: one warp per row over its `splits` candidates; ArgmaxF's NaN-at-0 rule applied last.
__global__ void ArgmaxFinalK(const float* __restrict__ logits, int64_t V, const uint64_t* __restrict__ part,
                             int splits, int64_t R, int32_t* __restrict__ ids) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (r >= R) return;  // whole warps exit together: r is uniform within a warp
  uint64_t best = 0;
  for (int c = lane; c < splits; c += 32) {
    const uint64_t v = part[r * splits + c];
    best = v > best ? v : best;
  }
  best = WarpMaxU64(best);
  if (lane == 0) {
    const uint32_t b0 = __float_as_uint(logits[r * V]);
    const bool nan0 = (b0 & 0x7fffffffu) > 0x7f800000u;
    ids[r] = nan0 ? 0 : static_cast<int32_t>(UnpackId(best));
  }
}

__global__ void MaskIdsK(float* logits, int64_t V, const int32_t* ban, int64_t R, int64_t M) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= R * M) return;
  const int32_t id = ban[i];
  // Rows may ban the same id twice: both threads store the same value, a benign duplicate.
  if (id >= 0 && id < V) logits[(i / M) * V + id] = -INFINITY;
}

}  // namespace

int ArgmaxSplits(int64_t R, int64_t V) {
  if (R <= 0 || V <= 0) return 0;
  const int64_t by_size = (V + kMinChunk - 1) / kMinChunk;
  const int64_t by_grid = (kTargetBlocks + R - 1) / R;
  const int64_t s = by_size < by_grid ? by_size : by_grid;
  return static_cast<int>(s < 1 ? 1 : s);
}

cudaError_t ArgmaxRows(const float* logits, int64_t R, int64_t V, uint64_t* scratch, int32_t* ids, cudaStream_t s) {
  // Ids are int32 and pass 1's grid.y is at most 65535.
  SPECD_CHECK_ARG(logits && scratch && ids && R >= 0 && V > 0 && V < 0x7fffffff && R <= 65535);
  if (R == 0) return cudaSuccess;
  const int splits = ArgmaxSplits(R, V);
  // chunk rounded up to a multiple of 4 so vector loads never straddle two blocks.
  int64_t chunk = (V + splits - 1) / splits;
  chunk = (chunk + 3) / 4 * 4;
  // Every block must own a non-empty range, or its candidate would be the empty 0 (harmless,
  // but the grid would be larger than needed): recompute splits from the rounded chunk.
  const int used = static_cast<int>((V + chunk - 1) / chunk);
  const dim3 grid(static_cast<unsigned>(used), static_cast<unsigned>(R));
  const bool vec = V % 4 == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0;
  if (vec) {
    ArgmaxPartialK<true><<<grid, kArgmaxThreads, 0, s>>>(logits, V, chunk, scratch);
  } else {
    ArgmaxPartialK<false><<<grid, kArgmaxThreads, 0, s>>>(logits, V, chunk, scratch);
  }
  const cudaError_t e = LaunchStatus();
  if (e != cudaSuccess) return e;
  constexpr int kRowsPerBlock = 4;  // 4 warps, one row each
  ArgmaxFinalK<<<Blocks(R, kRowsPerBlock), 32 * kRowsPerBlock, 0, s>>>(logits, V, scratch, used, R, ids);
  return LaunchStatus();
}

cudaError_t MaskIds(float* logits, int64_t R, int64_t V, const int32_t* ban, int64_t M, cudaStream_t s) {
  SPECD_CHECK_ARG(logits && R >= 0 && V > 0 && M >= 0 && (ban || R * M == 0));
  if (R * M == 0) return cudaSuccess;
  MaskIdsK<<<Blocks(R * M, 256), 256, 0, s>>>(logits, V, ban, R, M);
  return LaunchStatus();
}

}  // namespace specd::kernels
