// RMSNorm ((1+w) and plain w) and the GDN gated RMSNorm; fp32 statistics, one block per row.
#include "common.cuh"
#include "specd/kernels.h"

namespace specd::kernels {
namespace {

// y = x * rsqrt(mean(x^2) + eps) * (unit_offset ? 1 + w : w)
__device__ __forceinline__ float Load(const bf16* p, int64_t i) { return ToF(p[i]); }
__device__ __forceinline__ float Load(const float* p, int64_t i) { return p[i]; }

template <typename T>
__global__ void RmsNormK(const T* x, const bf16* w, int d, float eps, bool unit_offset, bf16* out) {
  GridLaunchDependents();  // a projection reads this output: let it prefetch its weights
  __shared__ float red[32];
  const T* xr = x + int64_t{blockIdx.x} * d;
  float ss = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = Load(xr, i);
    ss += v * v;
  }
  const float inv = rsqrtf(BlockSum(ss, red) / static_cast<float>(d) + eps);
  bf16* yr = out + int64_t{blockIdx.x} * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float wv = ToF(w[i]);
    yr[i] = ToB(Load(xr, i) * inv * (unit_offset ? 1.f + wv : wv));
  }
}

// h += mix (fp32 residual, bf16 branch output), then y = rmsnorm(h): the residual add and the
// next norm in one pass over the row instead of two kernels. Same reduction as RmsNormK, so the
// result is bitwise that of Add followed by RmsNorm.
__global__ void AddRmsNormK(float* h, const bf16* mix, const bf16* w, int d, float eps, bool unit_offset, bf16* out) {
  GridLaunchDependents();  // a projection reads this output: let it prefetch its weights
  __shared__ float red[32];
  float* hr = h + int64_t{blockIdx.x} * d;
  const bf16* mr = mix + int64_t{blockIdx.x} * d;
  float ss = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = hr[i] + ToF(mr[i]);
    hr[i] = v;
    ss += v * v;
  }
  const float inv = rsqrtf(BlockSum(ss, red) / static_cast<float>(d) + eps);
  bf16* yr = out + int64_t{blockIdx.x} * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float wv = ToF(w[i]);
    yr[i] = ToB(hr[i] * inv * (unit_offset ? 1.f + wv : wv));
  }
}

// n = bf16(o * rsqrt(mean(o^2) + eps)); y = bf16(n * w * silu(z))   (norm before gate)
__global__ void GatedRmsNormK(const bf16* o, const bf16* z, const bf16* w, int d, float eps, bf16* out) {
  GridLaunchDependents();  // a projection reads this output: let it prefetch its weights
  __shared__ float red[32];
  const int64_t base = int64_t{blockIdx.x} * d;
  float ss = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = ToF(o[base + i]);
    ss += v * v;
  }
  const float inv = rsqrtf(BlockSum(ss, red) / static_cast<float>(d) + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float n = ToF(ToB(ToF(o[base + i]) * inv));
    out[base + i] = ToB(n * ToF(w[i]) * SiluF(ToF(z[base + i])));
  }
}

int Threads(int d) { return d >= 1024 ? 512 : (d >= 256 ? 256 : 128); }

}  // namespace

cudaError_t RmsNorm(const void* x, bool x_f32, const bf16* w, int64_t rows, int d, float eps, bool unit_offset,
                    bf16* out, cudaStream_t s) {
  SPECD_CHECK_ARG(x && w && out && rows >= 0 && d > 0);
  if (rows == 0) return cudaSuccess;
  if (x_f32) {
    RmsNormK<float><<<static_cast<unsigned>(rows), Threads(d), 0, s>>>(static_cast<const float*>(x), w, d, eps,
                                                                        unit_offset, out);
  } else {
    RmsNormK<bf16><<<static_cast<unsigned>(rows), Threads(d), 0, s>>>(static_cast<const bf16*>(x), w, d, eps,
                                                                       unit_offset, out);
  }
  return LaunchStatus();
}

cudaError_t AddRmsNorm(float* h, const bf16* mix, const bf16* w, int64_t rows, int d, float eps, bool unit_offset,
                       bf16* out, cudaStream_t s) {
  SPECD_CHECK_ARG(h && mix && w && out && rows >= 0 && d > 0);
  if (rows == 0) return cudaSuccess;
  AddRmsNormK<<<static_cast<unsigned>(rows), Threads(d), 0, s>>>(h, mix, w, d, eps, unit_offset, out);
  return LaunchStatus();
}

cudaError_t GatedRmsNorm(const bf16* o, const bf16* z, const bf16* w, int64_t rows, int d, float eps, bf16* out,
                         cudaStream_t s) {
  SPECD_CHECK_ARG(o && z && w && out && rows >= 0 && d > 0);
  if (rows == 0) return cudaSuccess;
  GatedRmsNormK<<<static_cast<unsigned>(rows), Threads(d), 0, s>>>(o, z, w, d, eps, out);
  return LaunchStatus();
}

}  // namespace specd::kernels
