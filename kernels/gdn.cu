// The gated delta rule on the GPU, fp32 throughout.
//
// Per (sequence, value head) the state S [dk, dv] evolves per token t:
//   S <- e^{g_t} S;  S <- S + k_t (beta_t (v_t - S^T k_t))^T;  o_t = S^T q_t.
// One block per (span, value head), one thread per state column j: thread j keeps S[:, j] in
// registers, so S^T k, the rank-1 update and S^T q need no cross-thread reduction; k_t and q_t
// are broadcast through shared memory. The same step serves decode (T = 1), verify (kLog:
// the state is read, never written) and the replay that commits a verify's accepted prefix.
#include "common.cuh"
#include "specd/kernels.h"

namespace specd::kernels {
namespace {

// q, k: l2norm over dk (+1e-6 inside the rsqrt), q scaled by dk^-1/2. One warp per (token, key head).
__global__ void GdnPrepQkK(const bf16* y, int64_t C, int hk, int dk, float* q, float* k) {
  const int64_t t = blockIdx.x;
  const int h = threadIdx.y;
  const int lane = threadIdx.x;
  const bf16* yq = y + t * C + h * dk;
  const bf16* yk = y + t * C + int64_t{hk} * dk + h * dk;
  float sq = 0.f, sk = 0.f;
  for (int i = lane; i < dk; i += 32) {
    const float a = ToF(yq[i]), b = ToF(yk[i]);
    sq += a * a;
    sk += b * b;
  }
  sq = WarpSum(sq);
  sk = WarpSum(sk);
  const float iq = rsqrtf(sq + 1e-6f) * rsqrtf(static_cast<float>(dk)), ik = rsqrtf(sk + 1e-6f);
  for (int i = lane; i < dk; i += 32) {
    q[(t * hk + h) * dk + i] = ToF(yq[i]) * iq;
    k[(t * hk + h) * dk + i] = ToF(yk[i]) * ik;
  }
}

// v (fp32 copy), beta = sigmoid(b), g = -exp(A_log) * softplus(a + dt_bias).
__global__ void GdnPrepVgK(const bf16* y, const bf16* braw, const bf16* araw, const float* a_log, const float* dt_bias,
                           int64_t C, int hk, int hv, int dk, int dv, float* v, float* g, float* beta) {
  const int64_t t = blockIdx.x;
  const bf16* yv = y + t * C + 2 * int64_t{hk} * dk;
  for (int i = threadIdx.x; i < hv * dv; i += blockDim.x) v[t * hv * dv + i] = ToF(yv[i]);
  for (int h = threadIdx.x; h < hv; h += blockDim.x) {
    // beta = sigmoid(b) in the activation dtype, as transformers computes it.
    beta[t * hv + h] = ToF(ToB(SigmoidF(ToF(braw[t * hv + h]))));
    const float x = ToF(araw[t * hv + h]) + dt_bias[h];
    const float sp = x > 20.f ? x : log1pf(expf(x));
    g[t * hv + h] = -expf(a_log[h]) * sp;
  }
}

__global__ void GdnLogWriteK(const float* k, const float* v, const float* g, const float* beta, const SeqMeta* seqs,
                             int hk, int hv, int dk, int dv, int64_t log_cap, float* log_k, float* log_v,
                             float* log_g, float* log_beta) {
  const SeqMeta sm = seqs[blockIdx.y];
  const int t = blockIdx.x;
  if (!MetaWritesLog(sm.mode) || t >= sm.len) return;
  const int64_t src = sm.offset + t;
  const int64_t e = int64_t{sm.slot} * log_cap + sm.log_offset + t;
  for (int i = threadIdx.x; i < hk * dk; i += blockDim.x) log_k[e * hk * dk + i] = k[src * hk * dk + i];
  for (int i = threadIdx.x; i < hv * dv; i += blockDim.x) log_v[e * hv * dv + i] = v[src * hv * dv + i];
  for (int i = threadIdx.x; i < hv; i += blockDim.x) {
    log_g[e * hv + i] = g[src * hv + i];
    log_beta[e * hv + i] = beta[src * hv + i];
  }
}

// Runs `len` steps from S (thread column in registers). Tokens are read at row stride `rows`
// from the given bases: k/q [.., hk, dk], v [.., hv, dv], g/beta [.., hv].
template <int DK>
__device__ void RunSteps(float (&s)[DK], int len, int h, int kh, int hk, int hv, int dv, const float* q,
                         const float* k, const float* v, const float* g, const float* beta, bf16* o, float* ks,
                         float* qs) {
  const int j = threadIdx.x;
  for (int t = 0; t < len; ++t) {
    __syncthreads();
    for (int i = threadIdx.x; i < DK; i += blockDim.x) {
      ks[i] = k[(int64_t{t} * hk + kh) * DK + i];
      if (q != nullptr) qs[i] = q[(int64_t{t} * hk + kh) * DK + i];
    }
    __syncthreads();
    if (j >= dv) continue;
    const float decay = __expf(g[int64_t{t} * hv + h]);
    const float b = beta[int64_t{t} * hv + h];
    float m = 0.f;
#pragma unroll
    for (int i = 0; i < DK; ++i) {
      s[i] *= decay;
      m += s[i] * ks[i];
    }
    const float delta = b * (v[(int64_t{t} * hv + h) * dv + j] - m);
    float out = 0.f;
#pragma unroll
    for (int i = 0; i < DK; ++i) {
      s[i] += ks[i] * delta;
      out += s[i] * (q != nullptr ? qs[i] : 0.f);
    }
    if (o != nullptr) o[(int64_t{t} * hv + h) * dv + j] = ToB(out);
  }
}

template <int DK>
__global__ void GdnRecurrentK(const float* q, const float* k, const float* v, const float* g, const float* beta,
                              const SeqMeta* seqs, int hk, int hv, int dv, float* state, bf16* o) {
  __shared__ float ks[DK], qs[DK];
  const SeqMeta sm = seqs[blockIdx.x];
  const int h = blockIdx.y, kh = h / (hv / hk), j = threadIdx.x;
  float* S = state + (int64_t{sm.slot} * hv + h) * DK * dv;
  float s[DK];
#pragma unroll
  for (int i = 0; i < DK; ++i) s[i] = j < dv ? S[int64_t{i} * dv + j] : 0.f;
  const int64_t off = sm.offset;
  RunSteps<DK>(s, sm.len, h, kh, hk, hv, dv, q + off * hk * DK, k + off * hk * DK, v + off * hv * dv, g + off * hv,
               beta + off * hv, o + off * hv * dv, ks, qs);
  if (MetaWritesState(sm.mode) && j < dv) {
#pragma unroll
    for (int i = 0; i < DK; ++i) S[int64_t{i} * dv + j] = s[i];
  }
}

template <int DK>
__global__ void GdnReplayK(float* state, const float* log_k, const float* log_v, const float* log_g,
                           const float* log_beta, int keep, int hk, int hv, int dv) {
  __shared__ float ks[DK], qs[DK];
  const int h = blockIdx.x, kh = h / (hv / hk), j = threadIdx.x;
  float* S = state + int64_t{h} * DK * dv;
  float s[DK];
#pragma unroll
  for (int i = 0; i < DK; ++i) s[i] = j < dv ? S[int64_t{i} * dv + j] : 0.f;
  RunSteps<DK>(s, keep, h, kh, hk, hv, dv, nullptr, log_k, log_v, log_g, log_beta, nullptr, ks, qs);
  if (j < dv) {
#pragma unroll
    for (int i = 0; i < DK; ++i) S[int64_t{i} * dv + j] = s[i];
  }
}

int ThreadsFor(int dv) { return (dv + 31) / 32 * 32; }

}  // namespace

cudaError_t GdnPrep(const bf16* y, const bf16* braw, const bf16* araw, const float* a_log, const float* dt_bias,
                    int64_t n, int hk, int hv, int dk, int dv, float* q, float* k, float* v, float* g, float* beta,
                    cudaStream_t s) {
  SPECD_CHECK_ARG(y && braw && araw && a_log && dt_bias && q && k && v && g && beta);
  SPECD_CHECK_ARG(n >= 0 && hk > 0 && hv > 0 && hv % hk == 0 && dk > 0 && dv > 0 && hk <= 32);
  if (n == 0) return cudaSuccess;
  const int64_t C = 2 * int64_t{hk} * dk + int64_t{hv} * dv;
  GdnPrepQkK<<<static_cast<unsigned>(n), dim3(32, hk), 0, s>>>(y, C, hk, dk, q, k);
  GdnPrepVgK<<<static_cast<unsigned>(n), 256, 0, s>>>(y, braw, araw, a_log, dt_bias, C, hk, hv, dk, dv, v, g, beta);
  return LaunchStatus();
}

cudaError_t GdnLogWrite(const float* k, const float* v, const float* g, const float* beta, const SeqMeta* seqs,
                        int nseq, int max_len, int hk, int hv, int dk, int dv, int64_t log_cap, float* log_k,
                        float* log_v, float* log_g, float* log_beta, cudaStream_t s) {
  SPECD_CHECK_ARG(k && v && g && beta && seqs && log_k && log_v && log_g && log_beta && nseq >= 0 && max_len >= 0);
  if (nseq == 0 || max_len == 0) return cudaSuccess;
  GdnLogWriteK<<<dim3(static_cast<unsigned>(max_len), static_cast<unsigned>(nseq)), 256, 0, s>>>(
      k, v, g, beta, seqs, hk, hv, dk, dv, log_cap, log_k, log_v, log_g, log_beta);
  return LaunchStatus();
}

#define SPECD_GDN_DISPATCH(DKV, CALL) \
  switch (DKV) {                      \
    case 16: CALL(16); break;         \
    case 32: CALL(32); break;         \
    case 64: CALL(64); break;         \
    case 128: CALL(128); break;       \
    default: return cudaErrorInvalidValue; \
  }

cudaError_t GdnRecurrent(const float* q, const float* k, const float* v, const float* g, const float* beta,
                         const SeqMeta* seqs, int nseq, int hk, int hv, int dk, int dv, float* state, bf16* o,
                         cudaStream_t s) {
  SPECD_CHECK_ARG(q && k && v && g && beta && seqs && state && o && nseq >= 0 && hk > 0 && hv % hk == 0);
  SPECD_CHECK_ARG(dv > 0 && dv <= 1024);
  if (nseq == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(nseq), static_cast<unsigned>(hv));
#define SPECD_CALL(D) GdnRecurrentK<D><<<grid, ThreadsFor(dv), 0, s>>>(q, k, v, g, beta, seqs, hk, hv, dv, state, o)
  SPECD_GDN_DISPATCH(dk, SPECD_CALL)
#undef SPECD_CALL
  return LaunchStatus();
}

cudaError_t GdnReplay(float* state, const float* log_k, const float* log_v, const float* log_g, const float* log_beta,
                      int keep, int hk, int hv, int dk, int dv, cudaStream_t s) {
  SPECD_CHECK_ARG(state && log_k && log_v && log_g && log_beta && keep >= 0 && hk > 0 && hv % hk == 0);
  SPECD_CHECK_ARG(dv > 0 && dv <= 1024);
  if (keep == 0) return cudaSuccess;
#define SPECD_CALL(D) \
  GdnReplayK<D><<<static_cast<unsigned>(hv), ThreadsFor(dv), 0, s>>>(state, log_k, log_v, log_g, log_beta, keep, hk, hv, dv)
  SPECD_GDN_DISPATCH(dk, SPECD_CALL)
#undef SPECD_CALL
  return LaunchStatus();
}

}  // namespace specd::kernels
