// Helpers shared by the kernel files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace specd::kernels {

#define SPECD_CHECK_ARG(cond) \
  do {                        \
    if (!(cond)) return cudaErrorInvalidValue; \
  } while (0)

inline cudaError_t LaunchStatus() { return cudaGetLastError(); }

inline unsigned Blocks(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

__device__ __forceinline__ float ToF(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ __nv_bfloat16 ToB(float x) { return __float2bfloat16(x); }
__device__ __forceinline__ float SiluF(float x) { return x / (1.f + __expf(-x)); }
__device__ __forceinline__ float SigmoidF(float x) { return 1.f / (1.f + __expf(-x)); }

// Programmatic dependent launch (sm_90): a kernel launched with the programmatic-serialization
// attribute may start before the kernel ahead of it finishes; it must wait before reading that
// kernel's outputs. Both are no-ops for kernels launched normally.
__device__ __forceinline__ void GridDependencyWait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void GridLaunchDependents() { asm volatile("griddepcontrol.launch_dependents;" :::); }

// Rotate-half RoPE of the pair (x1 = x[j], x2 = x[j + rot/2]) at position p: shared by the RoPE
// kernel and the fused q/k kernel so both round identically. cos/sin are rounded to bf16 first,
// as transformers' bf16 rotary embedding holds them.
__device__ __forceinline__ void RopePair(float x1, float x2, float p, int j, int rot, float theta, float* o1,
                                         float* o2) {
  const float inv_freq = 1.f / powf(theta, static_cast<float>(2 * j) / static_cast<float>(rot));
  float sn, cs;
  sincosf(p * inv_freq, &sn, &cs);
  cs = ToF(ToB(cs));
  sn = ToF(ToB(sn));
  *o1 = x1 * cs - x2 * sn;
  *o2 = x2 * cs + x1 * sn;
}

// bf16(silu(bf16(g)) * bf16(u)): gate and up rounded to bf16 first, as the unfused GEMMs +
// SwiGLU kernel do; every SwiGLU epilogue goes through here so the forms round alike.
__device__ __forceinline__ __nv_bfloat16 SwiGluB(float g, float u) { return ToB(SiluF(ToF(ToB(g))) * ToF(ToB(u))); }

// Tensor-core dot products (skinny_gemm.cu, moe.cu): d += A (16 weight rows x 16 k) · B (16 k x
// 8 x rows), bf16 in, fp32 accumulate. Each element of d is its own dot product: what an output
// gets does not depend on the other rows in the tile.
__device__ __forceinline__ void Mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
// One 32-element K block of a 16-row weight tile against an 8-row x tile: lo / hi are a lane's
// 16 bytes of weight rows g and g + 8, x its 16 bytes of x row g, in the permuted K layout
// (lane (g, t) supplies k 8t..8t+3 to the first step and 8t+4..8t+7 to the second).
__device__ __forceinline__ void MmaKBlock(float (&d)[4], const uint4& lo, const uint4& hi, const uint4& x) {
  Mma16816(d, lo.x, hi.x, lo.y, hi.y, x.x, x.y);
  Mma16816(d, lo.z, hi.z, lo.w, hi.w, x.z, x.w);
}
// A lane's two weight rows (g and g + 8 of the 16-row tile at row0) of each tile, at its 16-byte
// column t; rows past M read row 0 (their outputs are never written); tile 1 is the up half
// (rows M..2M) of a gate/up weight.
template <int kTiles>
__device__ __forceinline__ void LaneWeightRows(const __nv_bfloat16* w, int64_t row0, int64_t M, int64_t K, int lane,
                                               const uint4* (&wr)[kTiles][2]) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int tile = 0; tile < kTiles; ++tile) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t m = row0 + g + 8 * h;
      const int64_t row = (m < M ? m : 0) + (tile == 1 ? M : 0);
      wr[tile][h] = reinterpret_cast<const uint4*>(w + row * K) + t;
    }
  }
}
// The K shares of each 16-row tile meet in slice order (0 + share 0 + share 1 + ...) in the
// slice-0 warp, one (weight tile, x tile) at a time through `part`. Every warp of the block must
// call it (barriers). Shared by the tensor-core kernels so their sums run in one order.
template <int SPLIT, int kTiles, int NT, int kWarps>
__device__ __forceinline__ void SumKShares(float (&acc)[kTiles][NT][4], float (&part)[kWarps][32][4], int warp,
                                           int lane, int slice) {
#pragma unroll
  for (int tile = 0; tile < kTiles; ++tile) {
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) part[warp][lane][e] = acc[tile][j][e];
      __syncthreads();
      if (slice == 0) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float v = 0.f;
#pragma unroll
          for (int s = 0; s < SPLIT; ++s) v += part[warp + s][lane][e];
          acc[tile][j][e] = v;
        }
      }
      __syncthreads();
    }
  }
}
// K shares per 16-row weight tile of the tensor-core kernels: enough warps for the bandwidth, at
// least 4 blocks of 32 per warp. A function of K alone, so a sum's order is fixed by the shape.
inline int MmaSplit(int64_t K) { return K >= 4096 ? 8 : (K >= 2048 ? 4 : (K >= 1024 ? 2 : 1)); }
// f(std::integral_constant<int, MmaSplit(K)>{}): the tensor-core kernels are instantiated per split.
template <typename Fn>
cudaError_t WithMmaSplit(int64_t K, Fn&& f) {
  switch (MmaSplit(K)) {
    case 8: return f(std::integral_constant<int, 8>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 2: return f(std::integral_constant<int, 2>{});
    default: return f(std::integral_constant<int, 1>{});
  }
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Block-wide sum; every thread gets the result. `red` holds 32 floats.
__device__ __forceinline__ float BlockSum(float v, float* red) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = WarpSum(v);
  __syncthreads();
  if (lane == 0) red[wid] = v;
  __syncthreads();
  float r = lane < nw ? red[lane] : 0.f;
  return WarpSum(r);
}
__device__ __forceinline__ float BlockMax(float v, float* red) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) red[wid] = v;
  __syncthreads();
  float r = lane < nw ? red[lane] : -INFINITY;
  return WarpMax(r);
}

}  // namespace specd::kernels
