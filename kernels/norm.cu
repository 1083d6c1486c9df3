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

// The attention layer's q/k preparation in one kernel, block (token, head) over hq query heads then
// hkv key heads: split the query from its gate (q2 row: D query, D gate per head), RMSNorm with
// (1 + w), then rotate-half RoPE on the first `rot` dims at the token's position. Same reduction
// as RmsNormK and the same rounding points as SplitQueryGate -> RmsNorm -> Rope, so bitwise equal.
__global__ void QkNormRopeK(const bf16* q2, bf16* k, const bf16* qw, const bf16* kw, const int32_t* pos, int hq,
                            int hkv, int d, int rot, float theta, float eps, bf16* q, bf16* gate) {
  extern __shared__ float row[];  // d normalised values (bf16-rounded)
  __shared__ float red[32];
  const int64_t t = blockIdx.x;
  const int h = blockIdx.y;
  const bool is_q = h < hq;
  const int hh = is_q ? h : h - hq;
  const bf16* src = is_q ? q2 + (t * hq + hh) * 2 * int64_t{d} : k + (t * hkv + hh) * int64_t{d};
  const bf16* w = is_q ? qw : kw;
  float ss = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = ToF(src[i]);
    ss += v * v;
  }
  const float inv = rsqrtf(BlockSum(ss, red) / static_cast<float>(d) + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x) row[i] = ToF(ToB(ToF(src[i]) * inv * (1.f + ToF(w[i]))));
  if (is_q) {
    for (int i = threadIdx.x; i < d; i += blockDim.x) gate[(t * hq + hh) * int64_t{d} + i] = src[d + i];
  }
  __syncthreads();  // row complete; k's source row is read before it is overwritten below
  bf16* dst = is_q ? q + (t * hq + hh) * int64_t{d} : k + (t * hkv + hh) * int64_t{d};
  const int half = rot / 2;
  const float p = static_cast<float>(pos[t]);
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    if (i >= rot) {
      dst[i] = ToB(row[i]);
      continue;
    }
    const int j = i < half ? i : i - half;
    float o1, o2;
    RopePair(row[j], row[j + half], p, j, rot, theta, &o1, &o2);
    dst[i] = ToB(i < half ? o1 : o2);
  }
}

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

cudaError_t QkNormRope(const bf16* q2, bf16* k, const bf16* q_norm, const bf16* k_norm, const int32_t* pos, int64_t n,
                       int hq, int hkv, int d, int rot, float theta, float eps, bf16* q, bf16* gate, cudaStream_t s) {
  SPECD_CHECK_ARG(q2 && k && q_norm && k_norm && pos && q && gate && n >= 0 && hq > 0 && hkv > 0 && d > 0);
  SPECD_CHECK_ARG(d <= 4096 && rot >= 0 && rot <= d && rot % 2 == 0 && n < 2147483647);
  if (n == 0) return cudaSuccess;
  QkNormRopeK<<<dim3(static_cast<unsigned>(n), static_cast<unsigned>(hq + hkv)), Threads(d), sizeof(float) * d, s>>>(
      q2, k, q_norm, k_norm, pos, hq, hkv, d, rot, theta, eps, q, gate);
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
