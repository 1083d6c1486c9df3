// Conversions, random fills and the elementwise ops of the forward.
#include "common.cuh"
#include "specd/kernels.h"

namespace specd::kernels {
namespace {

__global__ void F32ToBf16K(const float* in, bf16* out, int64_t n) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < n) out[i] = ToB(in[i]);
}
__global__ void Bf16ToF32K(const bf16* in, float* out, int64_t n) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < n) out[i] = ToF(in[i]);
}

__device__ uint64_t Mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Box-Muller on two counter-hash uniforms.
__global__ void RandomNormalK(void* out, bool out_bf16, int64_t n, float scale, float offset, uint64_t seed) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= n) return;
  const uint64_t h = Mix64(seed ^ Mix64(static_cast<uint64_t>(i)));
  const float u1 = (static_cast<float>(h >> 40) + 1.f) * (1.f / 16777217.f);
  const float u2 = static_cast<float>((h >> 16) & 0xffffff) * (1.f / 16777216.f);
  const float z = sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
  const float v = offset + scale * z;
  if (out_bf16) {
    static_cast<bf16*>(out)[i] = ToB(v);
  } else {
    static_cast<float*>(out)[i] = v;
  }
}

// out[t, :] = table[ids[t], :], 8 bf16 (16 bytes) per thread where rows allow it.
template <typename T>
__global__ void EmbeddingK(const bf16* table, int64_t h, const int32_t* ids, T* out) {
  const int64_t t = blockIdx.x;
  const bf16* src = table + int64_t{ids[t]} * h;
  T* dst = out + t * h;
  for (int64_t j = threadIdx.x; j < h; j += blockDim.x) dst[j] = static_cast<T>(src[j]);
}

__global__ void AddK(const bf16* a, const bf16* b, bf16* out, int64_t n) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < n) out[i] = ToB(ToF(a[i]) + ToF(b[i]));
}
__global__ void AddToResidualK(float* h, const bf16* b, int64_t n) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < n) h[i] += ToF(b[i]);
}
__global__ void SwiGluK(const bf16* g, const bf16* u, bf16* out, int64_t n) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < n) out[i] = SwiGluB(ToF(g[i]), ToF(u[i]));
}
// gu [rows, 2I] (gate columns, then up) -> out [rows, I]
__global__ void SwiGluPackedK(const bf16* gu, int64_t inner, bf16* out, int64_t n) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= n) return;
  const int64_t r = i / inner, c = i % inner;
  out[i] = SwiGluB(ToF(gu[r * 2 * inner + c]), ToF(gu[r * 2 * inner + inner + c]));
}
__global__ void SigmoidMulK(const bf16* x, const bf16* g, bf16* out, int64_t n) {
  GridLaunchDependents();  // o_proj reads this output: let it prefetch its weights
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < n) out[i] = ToB(ToF(x[i]) * SigmoidF(ToF(g[i])));
}
template <typename T>
__global__ void GatherRowsK(const T* x, const int64_t* rows, int64_t width, T* out) {
  const int64_t r = blockIdx.x;
  const T* src = x + rows[r] * width;
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) out[r * width + j] = src[j];
}
// Per head h of token t: q2 row [2d] = [query d | gate d].
__global__ void SplitQueryGateK(const bf16* q2, int heads, int d, bf16* q, bf16* gate) {
  const int64_t t = blockIdx.x;
  for (int j = threadIdx.x; j < heads * d; j += blockDim.x) {
    const int h = j / d, i = j % d;
    const bf16* src = q2 + (t * heads + h) * 2 * d;
    q[t * heads * d + j] = src[i];
    gate[t * heads * d + j] = src[d + i];
  }
}

}  // namespace

cudaError_t F32ToBf16(const float* in, bf16* out, int64_t n, cudaStream_t s) {
  SPECD_CHECK_ARG(n >= 0 && (n == 0 || (in && out)));
  if (n == 0) return cudaSuccess;
  F32ToBf16K<<<Blocks(n, 256), 256, 0, s>>>(in, out, n);
  return LaunchStatus();
}
cudaError_t Bf16ToF32(const bf16* in, float* out, int64_t n, cudaStream_t s) {
  SPECD_CHECK_ARG(n >= 0 && (n == 0 || (in && out)));
  if (n == 0) return cudaSuccess;
  Bf16ToF32K<<<Blocks(n, 256), 256, 0, s>>>(in, out, n);
  return LaunchStatus();
}
cudaError_t RandomNormal(void* out, bool out_bf16, int64_t n, float scale, float offset, uint64_t seed,
                         cudaStream_t s) {
  SPECD_CHECK_ARG(n >= 0 && (n == 0 || out));
  if (n == 0) return cudaSuccess;
  RandomNormalK<<<Blocks(n, 256), 256, 0, s>>>(out, out_bf16, n, scale, offset, seed);
  return LaunchStatus();
}
cudaError_t EmbeddingGather(const bf16* table, int64_t vocab, int64_t h, const int32_t* ids, int64_t n, void* out,
                            bool out_f32, cudaStream_t s) {
  SPECD_CHECK_ARG(table && ids && out && vocab > 0 && h > 0 && n >= 0);
  if (n == 0) return cudaSuccess;
  if (out_f32) {
    EmbeddingK<float><<<static_cast<unsigned>(n), 256, 0, s>>>(table, h, ids, static_cast<float*>(out));
  } else {
    EmbeddingK<bf16><<<static_cast<unsigned>(n), 256, 0, s>>>(table, h, ids, static_cast<bf16*>(out));
  }
  return LaunchStatus();
}
cudaError_t AddToResidual(float* h, const bf16* b, int64_t n, cudaStream_t s) {
  SPECD_CHECK_ARG(h && b && n >= 0);
  if (n == 0) return cudaSuccess;
  AddToResidualK<<<Blocks(n, 256), 256, 0, s>>>(h, b, n);
  return LaunchStatus();
}
cudaError_t Add(const bf16* a, const bf16* b, bf16* out, int64_t n, cudaStream_t s) {
  SPECD_CHECK_ARG(a && b && out && n >= 0);
  if (n == 0) return cudaSuccess;
  AddK<<<Blocks(n, 256), 256, 0, s>>>(a, b, out, n);
  return LaunchStatus();
}
cudaError_t SwiGlu(const bf16* gate, const bf16* up, bf16* out, int64_t n, cudaStream_t s) {
  SPECD_CHECK_ARG(gate && up && out && n >= 0);
  if (n == 0) return cudaSuccess;
  SwiGluK<<<Blocks(n, 256), 256, 0, s>>>(gate, up, out, n);
  return LaunchStatus();
}
cudaError_t SwiGluPacked(const bf16* gu, int64_t rows, int64_t inner, bf16* out, cudaStream_t s) {
  SPECD_CHECK_ARG(gu && out && rows >= 0 && inner > 0);
  if (rows == 0) return cudaSuccess;
  SwiGluPackedK<<<Blocks(rows * inner, 256), 256, 0, s>>>(gu, inner, out, rows * inner);
  return LaunchStatus();
}
cudaError_t SigmoidMul(const bf16* x, const bf16* gate, bf16* out, int64_t n, cudaStream_t s) {
  SPECD_CHECK_ARG(x && gate && out && n >= 0);
  if (n == 0) return cudaSuccess;
  SigmoidMulK<<<Blocks(n, 256), 256, 0, s>>>(x, gate, out, n);
  return LaunchStatus();
}
cudaError_t GatherRows(const void* x, const int64_t* rows, int64_t nrows, int64_t width, int elem_bytes, void* out,
                       cudaStream_t s) {
  SPECD_CHECK_ARG(x && rows && out && nrows >= 0 && width > 0 && (elem_bytes == 2 || elem_bytes == 4));
  if (nrows == 0) return cudaSuccess;
  if (elem_bytes == 4) {
    GatherRowsK<float><<<static_cast<unsigned>(nrows), 256, 0, s>>>(static_cast<const float*>(x), rows, width,
                                                                     static_cast<float*>(out));
  } else {
    GatherRowsK<bf16><<<static_cast<unsigned>(nrows), 256, 0, s>>>(static_cast<const bf16*>(x), rows, width,
                                                                    static_cast<bf16*>(out));
  }
  return LaunchStatus();
}
cudaError_t SplitQueryGate(const bf16* q2, int64_t n, int heads, int d, bf16* q, bf16* gate, cudaStream_t s) {
  SPECD_CHECK_ARG(q2 && q && gate && n >= 0 && heads > 0 && d > 0);
  if (n == 0) return cudaSuccess;
  SplitQueryGateK<<<static_cast<unsigned>(n), 256, 0, s>>>(q2, heads, d, q, gate);
  return LaunchStatus();
}

}  // namespace specd::kernels
