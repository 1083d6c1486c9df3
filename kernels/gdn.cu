// The gated delta rule on the GPU, fp32 throughout.
//
// Per (sequence, value head) the state S [dk, dv] evolves per token t:
//   S <- e^{g_t} S;  S <- S + k_t (beta_t (v_t - S^T k_t))^T;  o_t = S^T q_t.
// The state lives in registers for the whole span (see RunSteps for the layout); k_t and q_t are
// broadcast through shared memory. The same step serves decode (T = 1), verify (kLog: the state
// is read, never written) and the replay that commits a verify's accepted prefix.
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

// Layout of the recurrence: a block owns 32 state columns (lane = column) of one value head,
// and its 4 warps split the DK rows (DK/4 each), so every (head, 32-column chunk) is a block:
// 4x more blocks than a thread-per-column design, and each row read is one coalesced 128-byte
// transaction. S^T k and S^T q sum the warps' partial dot products through shared memory.
constexpr int kGdnWarps = 4;

template <int DK>
struct GdnTile {
  static constexpr int kRows = DK / kGdnWarps;
  float s[kRows];
};

// Runs `len` steps. Tokens are read at row stride from the given bases: k/q [.., hk, DK],
// v [.., hv, dv], g/beta [.., hv]. o (bf16) is written when q is given.
template <int DK>
__device__ void RunSteps(GdnTile<DK>& st, int len, int h, int kh, int hk, int hv, int dv, int col, const float* q,
                         const float* k, const float* v, const float* g, const float* beta, bf16* o, float* ks,
                         float* qs, float (*red)[32]) {
  constexpr int R = GdnTile<DK>::kRows;
  const int lane = threadIdx.x, w = threadIdx.y, tid = w * 32 + lane;
  const int r0 = w * R;
  for (int t = 0; t < len; ++t) {
    for (int i = tid; i < DK; i += 32 * kGdnWarps) {
      ks[i] = k[(int64_t{t} * hk + kh) * DK + i];
      if (q != nullptr) qs[i] = q[(int64_t{t} * hk + kh) * DK + i];
    }
    __syncthreads();
    const float decay = __expf(g[int64_t{t} * hv + h]);
    const float b = beta[int64_t{t} * hv + h];
    float m = 0.f;
#pragma unroll
    for (int i = 0; i < R; ++i) {
      st.s[i] *= decay;
      m += st.s[i] * ks[r0 + i];
    }
    red[w][lane] = m;
    __syncthreads();
    float mt = 0.f;
#pragma unroll
    for (int x = 0; x < kGdnWarps; ++x) mt += red[x][lane];
    const float vv = col < dv ? v[(int64_t{t} * hv + h) * dv + col] : 0.f;
    const float delta = b * (vv - mt);
    float out = 0.f;
#pragma unroll
    for (int i = 0; i < R; ++i) {
      st.s[i] += ks[r0 + i] * delta;
      if (q != nullptr) out += st.s[i] * qs[r0 + i];
    }
    __syncthreads();  // everyone has read red (m) and ks/qs
    if (q != nullptr) {
      red[w][lane] = out;
      __syncthreads();
      if (w == 0 && col < dv) {
        float ot = 0.f;
#pragma unroll
        for (int x = 0; x < kGdnWarps; ++x) ot += red[x][lane];
        o[(int64_t{t} * hv + h) * dv + col] = ToB(ot);
      }
      __syncthreads();
    }
  }
}

template <int DK>
__device__ void LoadTile(GdnTile<DK>& st, const float* S, int dv, int col) {
  const int r0 = threadIdx.y * GdnTile<DK>::kRows;
#pragma unroll
  for (int i = 0; i < GdnTile<DK>::kRows; ++i) st.s[i] = col < dv ? S[int64_t{r0 + i} * dv + col] : 0.f;
}
template <int DK>
__device__ void StoreTile(const GdnTile<DK>& st, float* S, int dv, int col) {
  if (col >= dv) return;
  const int r0 = threadIdx.y * GdnTile<DK>::kRows;
#pragma unroll
  for (int i = 0; i < GdnTile<DK>::kRows; ++i) S[int64_t{r0 + i} * dv + col] = st.s[i];
}

// grid (span, value head, 32-column chunk)
template <int DK>
__global__ void GdnRecurrentK(const float* q, const float* k, const float* v, const float* g, const float* beta,
                              const SeqMeta* seqs, int hk, int hv, int dv, float* state, bf16* o,
                              int chunk_min_len) {
  __shared__ float ks[DK], qs[DK];
  __shared__ float red[kGdnWarps][32];
  const SeqMeta sm = seqs[blockIdx.x];
  if (GdnSpanChunked(sm.mode, sm.len, chunk_min_len)) return;  // GdnChunked's span
  const int h = blockIdx.y, kh = h / (hv / hk), col = blockIdx.z * 32 + threadIdx.x;
  float* S = state + (int64_t{sm.slot} * hv + h) * DK * dv;
  GdnTile<DK> st;
  LoadTile<DK>(st, S, dv, col);
  const int64_t off = sm.offset;
  RunSteps<DK>(st, sm.len, h, kh, hk, hv, dv, col, q + off * hk * DK, k + off * hk * DK, v + off * hv * dv,
               g + off * hv, beta + off * hv, o + off * hv * dv, ks, qs, red);
  if (MetaWritesState(sm.mode)) StoreTile<DK>(st, S, dv, col);
}

// grid (value head, 32-column chunk)
template <int DK>
__global__ void GdnReplayK(float* state, const float* log_k, const float* log_v, const float* log_g,
                           const float* log_beta, int keep, int hk, int hv, int dv) {
  __shared__ float ks[DK], qs[DK];
  __shared__ float red[kGdnWarps][32];
  const int h = blockIdx.x, kh = h / (hv / hk), col = blockIdx.y * 32 + threadIdx.x;
  float* S = state + int64_t{h} * DK * dv;
  GdnTile<DK> st;
  LoadTile<DK>(st, S, dv, col);
  RunSteps<DK>(st, keep, h, kh, hk, hv, dv, col, nullptr, log_k, log_v, log_g, log_beta, nullptr, ks, qs, red);
  StoreTile<DK>(st, S, dv, col);
}

unsigned Chunks(int dv) { return static_cast<unsigned>((dv + 31) / 32); }

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
                         int chunk_min_len, cudaStream_t s) {
  SPECD_CHECK_ARG(q && k && v && g && beta && seqs && state && o && nseq >= 0 && hk > 0 && hv % hk == 0);
  SPECD_CHECK_ARG(dv > 0 && dv <= 1024 && chunk_min_len >= 0);
  if (nseq == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(nseq), static_cast<unsigned>(hv), Chunks(dv));
#define SPECD_CALL(D) GdnRecurrentK<D><<<grid, dim3(32, kGdnWarps), 0, s>>>(q, k, v, g, beta, seqs, hk, hv, dv, state, o, chunk_min_len)
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
  GdnReplayK<D><<<dim3(static_cast<unsigned>(hv), Chunks(dv)), dim3(32, kGdnWarps), 0, s>>>(state, log_k, log_v, log_g, log_beta, keep, hk, hv, dv)
  SPECD_GDN_DISPATCH(dk, SPECD_CALL)
#undef SPECD_CALL
  return LaunchStatus();
}

}  // namespace specd::kernels
