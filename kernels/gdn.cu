// The gated delta rule on the GPU, fp32 throughout.
//
// Per (sequence, value head) the state S [dk, dv] evolves per token t:
//   S <- e^{g_t} S;  S <- S + k_t (beta_t (v_t - S^T k_t))^T;  o_t = S^T q_t.
// The state lives in registers for the whole span (see StepColumn for the layout); k_t and q_t are
// broadcast through shared memory. The same step serves decode (T = 1), verify (kLog: the state
// is read, never written) and the replay that commits a verify's accepted prefix.
#include "common.cuh"
#include "specd/kernels.h"

namespace specd::kernels {
namespace {

// The l2-norm scales of one key head's q and k rows, per warp (every lane gets them): sums of
// squares over dk (lane-strided), +1e-6 inside the rsqrt, q's also times dk^-1/2. kN > 0 fixes
// the loop bound at compile time; dk itself stays a run-time value on purpose: a constant would
// let the compiler fold rsqrt(dk) exactly, and the fast-math rsqrt differs in the last bit. The
// unfused prep and the fused step both call this, so they agree bit for bit.
template <int kN = 0>
__device__ __forceinline__ float2 QkNormScales(const bf16* yq, const bf16* yk, int dk, int lane) {
  float sq = 0.f, sk = 0.f;
  for (int i = lane; i < (kN > 0 ? kN : dk); i += 32) {
    const float a = ToF(yq[i]), b = ToF(yk[i]);
    sq += a * a;
    sk += b * b;
  }
  sq = WarpSum(sq);
  sk = WarpSum(sk);
  return make_float2(rsqrtf(sq + 1e-6f) * rsqrtf(static_cast<float>(dk)), rsqrtf(sk + 1e-6f));
}

// beta = sigmoid(b) in the activation dtype (as transformers computes it); g = -exp(A_log) *
// softplus(a + dt_bias).
__device__ __forceinline__ void GdnGates(bf16 b, bf16 a, float a_log, float dt_bias, float* g, float* beta) {
  *beta = ToF(ToB(SigmoidF(ToF(b))));
  const float x = ToF(a) + dt_bias;
  const float sp = x > 20.f ? x : log1pf(expf(x));
  *g = -expf(a_log) * sp;
}

// q, k: l2-normalised (QkNormScales). One warp per (token, key head).
__global__ void GdnPrepQkK(const bf16* y, int64_t C, int hk, int dk, float* q, float* k) {
  const int64_t t = blockIdx.x;
  const int h = threadIdx.y;
  const int lane = threadIdx.x;
  const bf16* yq = y + t * C + h * dk;
  const bf16* yk = y + t * C + int64_t{hk} * dk + h * dk;
  const float2 sc = QkNormScales(yq, yk, dk, lane);
  for (int i = lane; i < dk; i += 32) {
    q[(t * hk + h) * dk + i] = ToF(yq[i]) * sc.x;
    k[(t * hk + h) * dk + i] = ToF(yk[i]) * sc.y;
  }
}

// v (fp32 copy), beta = sigmoid(b), g = -exp(A_log) * softplus(a + dt_bias).
__global__ void GdnPrepVgK(const bf16* y, const bf16* braw, const bf16* araw, const float* a_log, const float* dt_bias,
                           int64_t C, int hk, int hv, int dk, int dv, float* v, float* g, float* beta) {
  const int64_t t = blockIdx.x;
  const bf16* yv = y + t * C + 2 * int64_t{hk} * dk;
  for (int i = threadIdx.x; i < hv * dv; i += blockDim.x) v[t * hv * dv + i] = ToF(yv[i]);
  for (int h = threadIdx.x; h < hv; h += blockDim.x) {
    GdnGates(braw[t * hv + h], araw[t * hv + h], a_log[h], dt_bias[h], &g[t * hv + h], &beta[t * hv + h]);
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

// Layout of the recurrence: the state column's DK rows live in registers, split over the lanes of
// one warp (four lanes of 32 rows each at DK = 128), so a token's S^T k and S^T q are per-thread
// dot products finished by two shuffles: no shared-memory reduction and no barrier per token. A
// block covers kCols = 32 columns of one value head (128 blocks per layer for 9B's 32 heads: the
// 2 MB state loads over most SMs; 64-column blocks took 10.2 us per verify layer on H100) and
// shares the tokens' q/k through shared memory, staged kGroup tokens at a time. Decode, verify, short spans, the fused decode/verify kernel and
// the commit's replay all run StepColumn, so each of them is bitwise the others.
constexpr int kCols = 32;
constexpr int kGroup = kGdnFusedMaxLen;  // tokens staged at once (a verify of k = 16 fits)

template <int DK>
struct ColumnLayout {
  static constexpr int kSplit = DK > 64 ? 4 : (DK > 32 ? 2 : 1);  // lanes per column
  static constexpr int kRows = DK / kSplit;       // state rows per lane
  static constexpr int kThreads = kCols * kSplit;
  static constexpr int kColsPerWarp = 32 / kSplit;
  int col, row0, part;
  __device__ ColumnLayout() {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    col = blockIdx.z * kCols + warp * kColsPerWarp + lane % kColsPerWarp;
    part = lane / kColsPerWarp;
    row0 = part * kRows;
  }
  // Where row r of a token's q/k sits in shared memory: interleaved by lane part (r = part * kRows
  // + i at i * kSplit + part), so the parts of a warp read kSplit consecutive words at each step,
  // distinct banks, where a row-major layout put them kRows words apart (one bank: a 4-way
  // conflict on every q/k read).
  __device__ static int Slot(int r) { return (r % kRows) * kSplit + r / kRows; }
};

template <int DK>
__device__ __forceinline__ float FinishDot(float (&p)[4]) {
  float v = (p[0] + p[1]) + (p[2] + p[3]);
  // The lanes of one column differ by multiples of kColsPerWarp; each lane ends with the same sum
  // (float addition is commutative, so the pairs agree bit for bit).
#pragma unroll
  for (int off = ColumnLayout<DK>::kColsPerWarp; off < 32; off *= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// One token on one column: S <- e^g S; S <- S + k (beta (v - S^T k))^T; returns (S^T q)[col].
// k and q point at this lane's rows. Four partial sums per dot product keep the FMA chains short.
template <int DK>
__device__ __forceinline__ float StepColumn(float (&s)[ColumnLayout<DK>::kRows], const float* k, const float* q,
                                            float g, float beta, float v) {
  constexpr int R = ColumnLayout<DK>::kRows, S = ColumnLayout<DK>::kSplit;
  const float decay = __expf(g);
  float m[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int i = 0; i < R; ++i) {
    s[i] *= decay;
    m[i & 3] += s[i] * k[i * S];
  }
  const float delta = beta * (v - FinishDot<DK>(m));
  float o[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int i = 0; i < R; ++i) {
    s[i] += k[i * S] * delta;
    if (q != nullptr) o[i & 3] += s[i] * q[i * S];
  }
  return FinishDot<DK>(o);
}

template <int DK>
__device__ __forceinline__ void LoadColumn(float (&s)[ColumnLayout<DK>::kRows], const float* S, int dv,
                                           const ColumnLayout<DK>& L) {
#pragma unroll
  for (int i = 0; i < ColumnLayout<DK>::kRows; ++i) s[i] = L.col < dv ? S[int64_t{L.row0 + i} * dv + L.col] : 0.f;
}
template <int DK>
__device__ __forceinline__ void StoreColumn(const float (&s)[ColumnLayout<DK>::kRows], float* S, int dv,
                                            const ColumnLayout<DK>& L) {
  if (L.col >= dv) return;
#pragma unroll
  for (int i = 0; i < ColumnLayout<DK>::kRows; ++i) S[int64_t{L.row0 + i} * dv + L.col] = s[i];
}

struct StageSmem {
  float q[kGroup][128], k[kGroup][128], g[kGroup], beta[kGroup];
};

// `len` tokens from prepped fp32 inputs at row strides k/q [.., hk, DK], v [.., hv, dv],
// g/beta [.., hv]; o (bf16, [.., hv, dv]) written when q is given.
template <int DK>
__device__ void RunColumn(float (&s)[ColumnLayout<DK>::kRows], const ColumnLayout<DK>& L, int len, int h, int kh,
                          int hk, int hv, int dv, const float* q, const float* k, const float* v, const float* g,
                          const float* beta, bf16* o, StageSmem& sm) {
  const int col = L.col;
  for (int t0 = 0; t0 < len; t0 += kGroup) {
    const int n = min(kGroup, len - t0);
    __syncthreads();  // the previous group is consumed
    for (int e = threadIdx.x; e < n * DK; e += blockDim.x) {
      const int t = e / DK, i = e % DK;
      sm.k[t][ColumnLayout<DK>::Slot(i)] = k[(int64_t{t0 + t} * hk + kh) * DK + i];
      sm.q[t][ColumnLayout<DK>::Slot(i)] = q != nullptr ? q[(int64_t{t0 + t} * hk + kh) * DK + i] : 0.f;
    }
    for (int t = threadIdx.x; t < n; t += blockDim.x) {
      sm.g[t] = g[int64_t{t0 + t} * hv + h];
      sm.beta[t] = beta[int64_t{t0 + t} * hv + h];
    }
    __syncthreads();
    for (int t = 0; t < n; ++t) {
      const int64_t tok = t0 + t;
      const float vv = col < dv ? v[(tok * hv + h) * dv + col] : 0.f;
      const float out = StepColumn<DK>(s, sm.k[t] + L.part, q != nullptr ? sm.q[t] + L.part : nullptr, sm.g[t],
                                       sm.beta[t], vv);
      if (q != nullptr && col < dv && L.row0 == 0) o[(tok * hv + h) * dv + col] = ToB(out);
    }
  }
}

// grid (span, value head, column block)
template <int DK>
__global__ void __launch_bounds__(ColumnLayout<DK>::kThreads)
    GdnRecurrentK(const float* q, const float* k, const float* v, const float* g, const float* beta,
                  const SeqMeta* seqs, int hk, int hv, int dv, float* state, bf16* o, int chunk_min_len) {
  __shared__ StageSmem sm;
  const SeqMeta meta = seqs[blockIdx.x];
  if (GdnSpanChunked(meta.mode, meta.len, chunk_min_len)) return;  // GdnChunked's span
  const int h = blockIdx.y, kh = h / (hv / hk);
  const ColumnLayout<DK> L;
  float* S = state + (int64_t{meta.slot} * hv + h) * DK * dv;
  float s[ColumnLayout<DK>::kRows];
  LoadColumn<DK>(s, S, dv, L);
  const int64_t off = meta.offset;
  RunColumn<DK>(s, L, meta.len, h, kh, hk, hv, dv, q + off * hk * DK, k + off * hk * DK, v + off * hv * dv,
                g + off * hv, beta + off * hv, o + off * hv * dv, sm);
  if (MetaWritesState(meta.mode)) StoreColumn<DK>(s, S, dv, L);
}

// Decode and verify in one kernel: the prep (l2-normalised q/k, v, g, beta from the conv output
// and the gate projections, through the helpers GdnPrepQkK / GdnPrepVgK use), the verify log, and
// the recurrence. Spans of at most kGroup tokens. grid (span, value head, column block).
template <int DK>
__global__ void __launch_bounds__(ColumnLayout<DK>::kThreads) GdnFusedStepK(const bf16* y, const bf16* braw, const bf16* araw,
                                                       const float* a_log, const float* dt_bias, const SeqMeta* seqs,
                                                       int64_t C, int hk, int hv, int dk, int dv, float* state, bf16* o,
                                                       int64_t log_cap, float* log_k, float* log_v, float* log_g,
                                                       float* log_beta) {
  __shared__ StageSmem sm;
  const SeqMeta meta = seqs[blockIdx.x];
  const int h = blockIdx.y, ratio = hv / hk, kh = h / ratio;
  const ColumnLayout<DK> L;
  const int col = L.col;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int n = meta.len;
  for (int t = warp; t < n; t += nwarps) {
    const int64_t tok = meta.offset + t;
    const bf16* yq = y + tok * C + kh * DK;
    const bf16* yk = y + tok * C + int64_t{hk} * DK + kh * DK;
    const float2 sc = QkNormScales<DK>(yq, yk, dk, lane);
    for (int i = lane; i < DK; i += 32) {
      sm.q[t][ColumnLayout<DK>::Slot(i)] = ToF(yq[i]) * sc.x;
      sm.k[t][ColumnLayout<DK>::Slot(i)] = ToF(yk[i]) * sc.y;
    }
    if (lane == 0) GdnGates(braw[tok * hv + h], araw[tok * hv + h], a_log[h], dt_bias[h], &sm.g[t], &sm.beta[t]);
  }
  __syncthreads();
  const bool log = MetaWritesLog(meta.mode);
  if (log) {
    const int64_t e0 = int64_t{meta.slot} * log_cap + meta.log_offset;
    if (blockIdx.z == 0 && h % ratio == 0) {
      for (int e = threadIdx.x; e < n * DK; e += blockDim.x) {
        const int t = e / DK, i = e % DK;
        log_k[((e0 + t) * hk + kh) * DK + i] = sm.k[t][ColumnLayout<DK>::Slot(i)];
      }
    }
    if (blockIdx.z == 0) {
      for (int t = threadIdx.x; t < n; t += blockDim.x) {
        log_g[(e0 + t) * hv + h] = sm.g[t];
        log_beta[(e0 + t) * hv + h] = sm.beta[t];
      }
    }
  }
  float* S = state + (int64_t{meta.slot} * hv + h) * DK * dv;
  float s[ColumnLayout<DK>::kRows];
  LoadColumn<DK>(s, S, dv, L);
  const bf16* yv = y + int64_t{meta.offset} * C + 2 * int64_t{hk} * DK + int64_t{h} * dv;
  for (int t = 0; t < n; ++t) {
    const int64_t tok = meta.offset + t;
    const float vv = col < dv ? ToF(yv[int64_t{t} * C + col]) : 0.f;
    const bool writer = col < dv && L.row0 == 0;
    if (log && writer) log_v[((int64_t{meta.slot} * log_cap + meta.log_offset + t) * hv + h) * dv + col] = vv;
    const float out = StepColumn<DK>(s, sm.k[t] + L.part, sm.q[t] + L.part, sm.g[t], sm.beta[t], vv);
    if (writer) o[(tok * hv + h) * dv + col] = ToB(out);
  }
  if (MetaWritesState(meta.mode)) StoreColumn<DK>(s, S, dv, L);
}

// The commit's replay for every GDN layer of a model in one launch: grid (layer, value head,
// column block); starts from the checkpoint or the live state and writes the live state.
template <int DK>
__global__ void __launch_bounds__(ColumnLayout<DK>::kThreads)
    GdnReplayLayersK(GdnCommitTable tab, int slot, int keep, bool from_ckpt, int hk, int hv, int dv) {
  __shared__ StageSmem sm;
  const GdnCommitLayer& ly = tab.layer[blockIdx.x];
  const int h = blockIdx.y, kh = h / (hv / hk);
  const ColumnLayout<DK> L;
  const int64_t sz = int64_t{hv} * DK * dv, cap = tab.log_cap;
  float* S = ly.rec + int64_t{slot} * sz + int64_t{h} * DK * dv;
  const float* S0 = from_ckpt ? ly.ckpt_rec + int64_t{slot} * sz + int64_t{h} * DK * dv : S;
  float s[ColumnLayout<DK>::kRows];
  LoadColumn<DK>(s, S0, dv, L);
  RunColumn<DK>(s, L, keep, h, kh, hk, hv, dv, nullptr, ly.log_k + int64_t{slot} * cap * hk * DK,
                ly.log_v + int64_t{slot} * cap * hv * dv, ly.log_g + int64_t{slot} * cap * hv,
                ly.log_beta + int64_t{slot} * cap * hv, nullptr, sm);
  StoreColumn<DK>(s, S, dv, L);
}

unsigned Chunks(int dv) { return static_cast<unsigned>((dv + kCols - 1) / kCols); }

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
#define SPECD_CALL(D) GdnRecurrentK<D><<<grid, ColumnLayout<D>::kThreads, 0, s>>>(q, k, v, g, beta, seqs, hk, hv, dv, state, o, chunk_min_len)
  SPECD_GDN_DISPATCH(dk, SPECD_CALL)
#undef SPECD_CALL
  return LaunchStatus();
}

cudaError_t GdnFusedStep(const bf16* y, const bf16* braw, const bf16* araw, const float* a_log, const float* dt_bias,
                         const SeqMeta* seqs, int nseq, int max_len, int hk, int hv, int dk, int dv, float* state,
                         bf16* o, int64_t log_cap, float* log_k, float* log_v, float* log_g, float* log_beta,
                         cudaStream_t s) {
  SPECD_CHECK_ARG(y && braw && araw && a_log && dt_bias && seqs && state && o && nseq >= 0 && hk > 0 && hv % hk == 0);
  SPECD_CHECK_ARG(dv > 0 && dv <= 1024 && max_len <= kGdnFusedMaxLen && log_cap > 0);
  SPECD_CHECK_ARG(log_k && log_v && log_g && log_beta);
  if (nseq == 0 || max_len == 0) return cudaSuccess;
  const int64_t C = 2 * int64_t{hk} * dk + int64_t{hv} * dv;
  const dim3 grid(static_cast<unsigned>(nseq), static_cast<unsigned>(hv), Chunks(dv));
#define SPECD_CALL(D)                                                                                          \
  GdnFusedStepK<D><<<grid, ColumnLayout<D>::kThreads, 0, s>>>(y, braw, araw, a_log, dt_bias, seqs, C, hk, hv, dk, dv, state, o, log_cap, \
                                          log_k, log_v, log_g, log_beta)
  SPECD_GDN_DISPATCH(dk, SPECD_CALL)
#undef SPECD_CALL
  return LaunchStatus();
}

cudaError_t GdnReplayLayers(const GdnCommitTable& tab, int slot, int keep, bool from_checkpoint, int hk, int hv, int dk,
                            int dv, cudaStream_t s) {
  SPECD_CHECK_ARG(tab.layers > 0 && tab.layers <= kGdnCommitMaxLayers && slot >= 0 && keep >= 0 && tab.log_cap > 0);
  SPECD_CHECK_ARG(hk > 0 && hv % hk == 0 && dv > 0 && dv <= 1024 && keep <= tab.log_cap);
  if (keep == 0 && !from_checkpoint) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(tab.layers), static_cast<unsigned>(hv), Chunks(dv));
#define SPECD_CALL(D) GdnReplayLayersK<D><<<grid, ColumnLayout<D>::kThreads, 0, s>>>(tab, slot, keep, from_checkpoint, hk, hv, dv)
  SPECD_GDN_DISPATCH(dk, SPECD_CALL)
#undef SPECD_CALL
  return LaunchStatus();
}

}  // namespace specd::kernels
