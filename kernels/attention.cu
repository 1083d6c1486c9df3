// Partial RoPE, KV-cache append and causal GQA attention over each slot's cache.
#include "common.cuh"
#include "specd/kernels.h"

namespace specd::kernels {
namespace {

// Rotate-half on dims [0, rot): (x_i, x_{i+rot/2}) -> (x_i c - x_{i+h} s, x_{i+h} c + x_i s),
// angle = pos * theta^(-2i/rot) in fp32, cos/sin rounded to bf16 as transformers does.
__global__ void RopeK(bf16* x, const int32_t* pos, int heads, int d, int rot, float theta) {
  const int64_t t = blockIdx.x;
  const int half = rot / 2;
  const float p = static_cast<float>(pos[t]);
  for (int j = threadIdx.x; j < heads * half; j += blockDim.x) {
    const int h = j / half, i = j % half;
    const float inv_freq = 1.f / powf(theta, static_cast<float>(2 * i) / static_cast<float>(rot));
    float sn, cs;
    sincosf(p * inv_freq, &sn, &cs);
    cs = ToF(ToB(cs));
    sn = ToF(ToB(sn));
    bf16* u = x + (t * heads + h) * d;
    const float x1 = ToF(u[i]), x2 = ToF(u[i + half]);
    u[i] = ToB(x1 * cs - x2 * sn);
    u[i + half] = ToB(x2 * cs + x1 * sn);
  }
}

__global__ void KvAppendK(const bf16* k, const bf16* v, const int32_t* tok_slot, const int32_t* tok_pos, int hkv,
                          int d, int64_t max_ctx, bf16* kc, bf16* vc) {
  const int64_t t = blockIdx.x;
  for (int j = threadIdx.x; j < hkv * d; j += blockDim.x) {
    const int h = j / d, i = j % d;
    const int64_t dst = ((int64_t{tok_slot[t]} * hkv + h) * max_ctx + tok_pos[t]) * d + i;
    kc[dst] = k[t * hkv * d + j];
    vc[dst] = v[t * hkv * d + j];
  }
}

constexpr int kAttnThreads = 128;
constexpr int kMaxD = 512;

// One block per (token, query head). Keys in tiles of kAttnThreads: each thread scores one key,
// then the tile's softmax weights update a running (max, sum, output) — the online softmax.
// Each thread owns output dims threadIdx.x, +128, ... so value reads are coalesced.
__global__ void AttentionK(const bf16* q, const bf16* kc, const bf16* vc, const int32_t* tok_slot,
                           const int32_t* tok_pos, int hq, int hkv, int d, int64_t max_ctx, float scale, bf16* out) {
  __shared__ float qs[kMaxD];
  __shared__ float ps[kAttnThreads];
  __shared__ float red[32];
  const int64_t t = blockIdx.x / hq;
  const int h = static_cast<int>(blockIdx.x % hq);
  const int kvh = h / (hq / hkv);
  const int64_t n_keys = tok_pos[t] + 1;
  const bf16* K = kc + (int64_t{tok_slot[t]} * hkv + kvh) * max_ctx * d;
  const bf16* V = vc + (int64_t{tok_slot[t]} * hkv + kvh) * max_ctx * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) qs[i] = ToF(q[(t * hq + h) * d + i]);
  constexpr int kPer = kMaxD / kAttnThreads;
  float acc[kPer];
#pragma unroll
  for (int r = 0; r < kPer; ++r) acc[r] = 0.f;
  float m_run = -INFINITY, l_run = 0.f;
  __syncthreads();
  for (int64_t j0 = 0; j0 < n_keys; j0 += kAttnThreads) {
    const int64_t j = j0 + threadIdx.x;
    float sc = -INFINITY;
    if (j < n_keys) {
      const bf16* kr = K + j * d;
      float dot = 0.f;
      for (int i = 0; i < d; ++i) dot += qs[i] * ToF(kr[i]);
      sc = dot * scale;
    }
    const float m_tile = BlockMax(sc, red);
    const float m_new = fmaxf(m_run, m_tile);
    const float p = j < n_keys ? __expf(sc - m_new) : 0.f;
    const float l_tile = BlockSum(p, red);
    ps[threadIdx.x] = p;
    __syncthreads();
    const float corr = __expf(m_run - m_new);
    l_run = l_run * corr + l_tile;
    m_run = m_new;
    const int tile = static_cast<int>(n_keys - j0 < kAttnThreads ? n_keys - j0 : kAttnThreads);
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
      const int i = threadIdx.x + r * kAttnThreads;
      if (i >= d) continue;
      float a = acc[r] * corr;
      for (int jj = 0; jj < tile; ++jj) a += ps[jj] * ToF(V[(j0 + jj) * d + i]);
      acc[r] = a;
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int i = threadIdx.x + r * kAttnThreads;
    if (i < d) out[(t * hq + h) * d + i] = ToB(acc[r] / l_run);
  }
}

}  // namespace

cudaError_t Rope(bf16* x, const int32_t* pos, int64_t n, int heads, int d, int rot, float theta, cudaStream_t s) {
  SPECD_CHECK_ARG(x && pos && n >= 0 && heads > 0 && rot > 0 && rot % 2 == 0 && rot <= d && theta > 0.f);
  if (n == 0) return cudaSuccess;
  RopeK<<<static_cast<unsigned>(n), 128, 0, s>>>(x, pos, heads, d, rot, theta);
  return LaunchStatus();
}

cudaError_t KvAppend(const bf16* k, const bf16* v, const int32_t* tok_slot, const int32_t* tok_pos, int64_t n, int hkv,
                     int d, int64_t max_ctx, bf16* kc, bf16* vc, cudaStream_t s) {
  SPECD_CHECK_ARG(k && v && tok_slot && tok_pos && kc && vc && n >= 0 && hkv > 0 && d > 0 && max_ctx > 0);
  if (n == 0) return cudaSuccess;
  KvAppendK<<<static_cast<unsigned>(n), 256, 0, s>>>(k, v, tok_slot, tok_pos, hkv, d, max_ctx, kc, vc);
  return LaunchStatus();
}

cudaError_t Attention(const bf16* q, const bf16* kc, const bf16* vc, const int32_t* tok_slot, const int32_t* tok_pos,
                      int64_t n, int hq, int hkv, int d, int64_t max_ctx, float scale, bf16* out, cudaStream_t s) {
  SPECD_CHECK_ARG(q && kc && vc && tok_slot && tok_pos && out && n >= 0 && hq > 0 && hkv > 0 && hq % hkv == 0);
  SPECD_CHECK_ARG(d > 0 && d <= kMaxD && max_ctx > 0);
  if (n == 0) return cudaSuccess;
  AttentionK<<<static_cast<unsigned>(n * hq), kAttnThreads, 0, s>>>(q, kc, vc, tok_slot, tok_pos, hq, hkv, d, max_ctx,
                                                                    scale, out);
  return LaunchStatus();
}

}  // namespace specd::kernels
