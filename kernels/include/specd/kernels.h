// specd CUDA kernels: host launchers. bf16 activations and weights, fp32 accumulation, fp32 GDN
// state. Every launcher checks its sizes and returns cudaErrorInvalidValue on bad ones (no
// launch), else the launch's error. Each kernel's math is written above it in its .cu file; the
// CPU backend (engine/runtime/cpu_*.cpp) is the reference it is tested against.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "specd/limits.h"
#include "specd/state_mode.h"

namespace specd::kernels {

using bf16 = __nv_bfloat16;

// One span of a flattened batch, as the engine's SeqSpan (runtime/batch.h).
struct SeqMeta {
  int32_t slot;
  int32_t offset;
  int32_t len;
  int32_t n_past;
  int32_t mode;        // a StateMode (specd/state_mode.h): 0 update, 1 log (state read-only), 2 both
  int32_t log_offset;
};
#ifdef __CUDACC__
#define SPECD_HD __host__ __device__
#else
#define SPECD_HD
#endif
SPECD_HD inline bool MetaWritesState(int mode) { return mode != static_cast<int>(StateMode::kLog); }
SPECD_HD inline bool MetaWritesLog(int mode) { return mode != static_cast<int>(StateMode::kUpdate); }

// ---- conversions and fills ----
cudaError_t F32ToBf16(const float* in, bf16* out, int64_t n, cudaStream_t s);
cudaError_t Bf16ToF32(const bf16* in, float* out, int64_t n, cudaStream_t s);
// out[i] = offset + scale * N(0,1) from a counter hash of (seed, i): reproducible, no state.
cudaError_t RandomNormal(void* out, bool out_bf16, int64_t n, float scale, float offset, uint64_t seed,
                         cudaStream_t s);

// ---- elementwise ----
// out rows are bf16, or fp32 when out_f32 (the residual stream).
cudaError_t EmbeddingGather(const bf16* table, int64_t vocab, int64_t h, const int32_t* ids, int64_t n, void* out,
                            bool out_f32, cudaStream_t s);
cudaError_t Add(const bf16* a, const bf16* b, bf16* out, int64_t n, cudaStream_t s);
// The fp32 residual stream: h += b (b bf16).
cudaError_t AddToResidual(float* h, const bf16* b, int64_t n, cudaStream_t s);
cudaError_t SwiGlu(const bf16* gate, const bf16* up, bf16* out, int64_t n, cudaStream_t s);
// gu [rows, 2*inner] (gate columns, then up columns) -> out [rows, inner]
cudaError_t SwiGluPacked(const bf16* gu, int64_t rows, int64_t inner, bf16* out, cudaStream_t s);
cudaError_t SigmoidMul(const bf16* x, const bf16* gate, bf16* out, int64_t n, cudaStream_t s);
// Rows of `elem_bytes`-sized elements (2 or 4).
cudaError_t GatherRows(const void* x, const int64_t* rows, int64_t nrows, int64_t width, int elem_bytes, void* out,
                       cudaStream_t s);
cudaError_t SplitQueryGate(const bf16* q2, int64_t n, int heads, int d, bf16* q, bf16* gate, cudaStream_t s);

// ---- skinny GEMM (decode / verify) ----
// out[n, M] = x[n, K] · w[M, K]^T for n <= kSkinnyMaxRows, K % 8 == 0, 16-byte aligned x and w;
// out bf16 or fp32. Bandwidth-bound: streams w once. Every row's result is the same bits whatever
// n is; past 16 rows (the wide form) K % 32 == 0 and x's K slice must fit in shared memory
// (SkinnyGemmApplies says whether a call qualifies).
constexpr int64_t kSkinnyMaxRows = 64;
bool SkinnyGemmApplies(int64_t n, int64_t K, const void* x, const void* w);
cudaError_t SkinnyGemm(const bf16* x, const bf16* w, void* out, bool out_f32, int64_t n, int64_t M, int64_t K,
                       cudaStream_t s);
// Projections whose weights lie back to back in w: rows [end[i-1], end[i]) write out[i]
// ([n, end[i] - end[i-1]], bf16). One launch, one weight stream.
constexpr int kSkinnyMaxStack = 4;
struct SkinnyStack {
  int count = 0;
  int64_t end[kSkinnyMaxStack] = {};
  void* out[kSkinnyMaxStack] = {};
};
cudaError_t SkinnyGemmStacked(const bf16* x, const bf16* w, const SkinnyStack& stack, int64_t n, int64_t K,
                              cudaStream_t s);
// out[n, I] = bf16(silu(bf16(x·gate_m)) * bf16(x·up_m)) with w_gate_up = [gate; up] ([2I, K]).
cudaError_t SkinnyGemmSwiGlu(const bf16* x, const bf16* w_gate_up, bf16* out, int64_t n, int64_t I, int64_t K,
                             cudaStream_t s);
// Skinny GEMMs start early (programmatic dependent launch) unless turned off (benchmarks A/B).
void SetProgrammaticLaunch(bool on);
// Rows 17..64 on the wide tensor-core form (on: every row's bits as at 1..16 rows, batch-invariant
// serving) or on cuBLASLt (off, the default: faster today).
void SetSkinnyWide(bool on);
// Benchmarks: force warps per row (1, 2, 4) and 16-byte chunks in flight per warp (4, 8); 0 = by shape.
void SetSkinnyVariant(int split, int unroll);
// Benchmarks: one-row GEMMs on the CUDA-core kernel instead of the tensor-core one (decode and
// verify then no longer agree bit for bit).
void SetCudaCoreDecode(bool on);

// ---- norms ----
// y = x * rsqrt(mean(x^2) + eps) * (unit_offset ? 1 + w : w), rows of d; x bf16 or fp32.
cudaError_t RmsNorm(const void* x, bool x_f32, const bf16* w, int64_t rows, int d, float eps, bool unit_offset,
                    bf16* out, cudaStream_t s);
// y = bf16(rmsnorm(o)) * w * silu(z), rows of d.
// h[rows, d] (fp32) += mix (bf16); out = bf16(rmsnorm(h) * (unit_offset ? 1 + w : w)).
cudaError_t AddRmsNorm(float* h, const bf16* mix, const bf16* w, int64_t rows, int d, float eps, bool unit_offset,
                       bf16* out, cudaStream_t s);
// SplitQueryGate + RmsNorm(1 + w) of q and of k (k in place) + RoPE of both, one kernel, bitwise
// equal to the five; pos per token (the staged positions).
cudaError_t QkNormRope(const bf16* q2, bf16* k, const bf16* q_norm, const bf16* k_norm, const int32_t* pos, int64_t n,
                       int hq, int hkv, int d, int rot, float theta, float eps, bf16* q, bf16* gate, cudaStream_t s);
cudaError_t GatedRmsNorm(const bf16* o, const bf16* z, const bf16* w, int64_t rows, int d, float eps, bf16* out,
                         cudaStream_t s);

// ---- attention ----
// Rotate-half RoPE on the first `rot` dims of each head at position pos[t].
cudaError_t Rope(bf16* x, const int32_t* pos, int64_t n, int heads, int d, int rot, float theta, cudaStream_t s);
// A paged KV cache: k/v [num_blocks, hkv, block_size, d]; row j of slot s is row j % block_size
// of block table[s * max_blocks + j / block_size] (-1: no block).
struct PagedKv {
  bf16* k = nullptr;
  bf16* v = nullptr;
  const int32_t* table = nullptr;  // [num_slots, max_blocks]
  int64_t num_blocks = 0;
  int num_slots = 0;
  int max_blocks = 0;
  int block_size = 0;
};
// Row (slot[t], h, pos[t]) of the cache = k/v[t, h]. A row with no block in the table is not
// written (the engine reserves blocks first; the guard keeps a bad table from corrupting memory).
cudaError_t KvAppend(const bf16* k, const bf16* v, const int32_t* tok_slot, const int32_t* tok_pos, int64_t n, int hkv,
                     int d, const PagedKv& kv, cudaStream_t s);
// Causal GQA attention of token t over keys 0..pos[t] of its slot; fp32 online softmax, keys split
// over `splits` blocks per (token, head) and merged. scratch: n*hq*splits*(d+2) floats.
// d must be a multiple of 32 (<= 512). Keys with no block in the table are skipped.
cudaError_t Attention(const bf16* q, const PagedKv& kv, const int32_t* tok_slot, const int32_t* tok_pos, int64_t n,
                      int hq, int hkv, int d, float scale, float* scratch, int splits, bf16* out, cudaStream_t s);
// A split count that fills the GPU for n*hq (token, head) pairs over a max_ctx-long cache.
int AttentionSplits(int64_t tokens, int heads, int64_t max_ctx);

// ---- GDN conv ----
// y[t, c] = silu(sum_j w[c, j] * xt(t + 1 + j, c)), xt = [window of the span's slot (K rows) | p rows].
cudaError_t CausalConvSilu(const bf16* p, const bf16* w, const bf16* win, const SeqMeta* seqs, const int32_t* tok_seq,
                           int64_t n, int64_t C, int K, bf16* y, cudaStream_t s);
// Per span: log raw rows (log modes) and move the window to the last K rows of [window | p] (state modes).
cudaError_t ConvStateUpdate(const bf16* p, const SeqMeta* seqs, int nseq, int64_t C, int K, bf16* win,
                            int64_t log_cap, bf16* log_raw, cudaStream_t s);
// One slot: window <- last K rows of [window | log_raw rows 0..keep).
cudaError_t ConvWindowReplay(bf16* win, const bf16* log_raw, int keep, int64_t C, int K, cudaStream_t s);

// ---- gated delta rule ----
// q, k (l2-normalised, q scaled by dk^-1/2) [n, hk, dk], v [n, hv, dv], g, beta [n, hv], all fp32.
cudaError_t GdnPrep(const bf16* y, const bf16* braw, const bf16* araw, const float* a_log, const float* dt_bias,
                    int64_t n, int hk, int hv, int dk, int dv, float* q, float* k, float* v, float* g, float* beta,
                    cudaStream_t s);
// Copies k, v, g, beta of logging spans into the slot logs [slots, log_cap, ...].
cudaError_t GdnLogWrite(const float* k, const float* v, const float* g, const float* beta, const SeqMeta* seqs,
                        int nseq, int max_len, int hk, int hv, int dk, int dv, int64_t log_cap, float* log_k,
                        float* log_v, float* log_g, float* log_beta, cudaStream_t s);
// Spans of mode 0 (update, no log) with at least `chunk_min_len` tokens run the chunked form
// (GdnChunked); decode, verify and draft spans stay token by token. 0 turns the chunked form off.
constexpr int kGdnChunk = 64;
constexpr int kGdnChunkMinLen = 32;
SPECD_HD inline bool GdnSpanChunked(int mode, int64_t len, int chunk_min_len) {
  return chunk_min_len > 0 && mode == 0 && len >= chunk_min_len;
}
// The recurrence over each span from its slot's state [slots, hv, dk, dv]; writes o [n, hv*dv]
// (bf16) and, for state modes, the final state. Skips the spans GdnSpanChunked selects.
cudaError_t GdnRecurrent(const float* q, const float* k, const float* v, const float* g, const float* beta,
                         const SeqMeta* seqs, int nseq, int hk, int hv, int dk, int dv, float* state, bf16* o,
                         int chunk_min_len, cudaStream_t s);
// Head shapes the chunked kernels are built for (dk in {16, 32, 64, 128}, dv <= 1024).
bool GdnChunkSupports(int hk, int hv, int dk, int dv);
// Scratch of GdnChunked for one span, in floats: per token (padded up to a multiple of 64) and
// value head dk + 2 dv + 65 floats; Qwen3.5-9B (hv 32, dk = dv = 128): 57.5 KB per token.
int64_t GdnChunkScratchFloats(int64_t len, int hv, int dk, int dv);
// The chunked (WY, chunk 64) form over one span of `len` tokens starting at row t0 of q/k [n, hk,
// dk], v [n, hv, dv], g/beta [n, hv] (GdnPrep's outputs): state [hv, dk, dv] is the slot's state,
// read as the initial state and overwritten with the final one; o rows t0 .. t0 + len written.
cudaError_t GdnChunked(const float* q, const float* k, const float* v, const float* g, const float* beta,
                       int64_t t0, int64_t len, int hk, int hv, int dk, int dv, float* state, float* scratch, bf16* o,
                       cudaStream_t s);
// One slot: state [hv, dk, dv] <- replay of log entries 0..keep.
// Decode and verify spans (at most kGdnFusedMaxLen tokens each, none chunked) in one kernel:
// GdnPrep + GdnLogWrite + GdnRecurrent, bitwise equal to running the three.
constexpr int kGdnFusedMaxLen = 17;
static_assert(kGdnFusedMaxLen >= kMaxVerifySpan, "a verify span must fit the fused GDN kernel");
cudaError_t GdnFusedStep(const bf16* y, const bf16* braw, const bf16* araw, const float* a_log, const float* dt_bias,
                         const SeqMeta* seqs, int nseq, int max_len, int hk, int hv, int dk, int dv, float* state,
                         bf16* o, int64_t log_cap, float* log_k, float* log_v, float* log_g, float* log_beta,
                         cudaStream_t s);
// The commit of one slot across every GDN layer of a model (two launches, not two per layer):
// per layer its live window/state, checkpoint and log (pointers to slot 0; slots at fixed strides).
constexpr int kGdnCommitMaxLayers = 64;
struct GdnCommitLayer {
  bf16* conv;
  const bf16* ckpt_conv;
  const bf16* log_raw;
  float* rec;
  const float* ckpt_rec;
  const float* log_k;
  const float* log_v;
  const float* log_g;
  const float* log_beta;
};
struct GdnCommitTable {
  int layers = 0;
  int64_t log_cap = 0;
  GdnCommitLayer layer[kGdnCommitMaxLayers];
};
// Recurrent state: from the checkpoint (or the live state), replay `keep` logged tokens.
cudaError_t GdnReplayLayers(const GdnCommitTable& tab, int slot, int keep, bool from_checkpoint, int hk, int hv, int dk,
                            int dv, cudaStream_t s);
// Conv windows: restore the checkpoint if asked, then shift in the first `keep` logged rows.
cudaError_t ConvReplayLayers(const GdnCommitTable& tab, int slot, int keep, bool from_checkpoint, int64_t C, int K,
                             cudaStream_t s);

// ---- MoE ----
// probs = softmax(logits) in fp32; top-k ids (ties to the lower id), weights renormalised.
cudaError_t RouterTopK(const float* logits, int64_t n, int experts, int k, int32_t* ids, float* weights,
                       cudaStream_t s);
// acc[rows[i], :] += w[i] * y[i, :]   (rows unique within one call)
cudaError_t ScaledRowAdd(const bf16* y, const int32_t* rows, const float* w, int64_t n, int64_t h, float* acc,
                         cudaStream_t s);
// out = bf16(acc + (gate_logit ? sigmoid(gate_logit[row]) * shared : 0))
cudaError_t MoeFinish(const float* acc, const bf16* shared, const bf16* gate_logit, int64_t n, int64_t h, bf16* out,
                      cudaStream_t s);

// Routed experts with no host round trip, so a forward holding them can be captured in a graph:
// MoeGroup sorts the n*k (token, expert) entries of ids by expert on the device; MoeExperts runs
// every chosen expert's SwiGLU FFN over its rows, each expert's weights streamed once per call;
// MoeCombine sums each token's expert outputs. Launch grids depend on (n, k, experts, h, inter)
// only: min(experts, n*k) expert slots, and blocks of a slot no expert took exit at once.
// A row's expert output is summed in an order fixed by the shape, whatever rows share its expert
// or the call, so decode and verify agree bit for bit; the order entries land in within an
// expert (atomics) changes no output bit.
// Past kMoeDeviceMaxRows tokens (prefill) the backend keeps its cuBLAS path: the expert kernel
// walks an expert's rows 16 at a time, re-reading its weights from L2 for every 16.
constexpr int64_t kMoeDeviceMaxRows = 1024;
constexpr int kMoeMaxExperts = 4096;
constexpr int kMoeMaxTopK = 32;
// Shapes the device path takes (x and weights must also be 16-byte aligned).
bool MoeDeviceApplies(int64_t n, int64_t h, int64_t inter, int experts, int k);
// int32 scratch MoeGroup fills for the other two.
int64_t MoeScratchInts(int64_t n, int k, int experts);
cudaError_t MoeGroup(const int32_t* ids, int64_t n, int k, int experts, int32_t* scratch, cudaStream_t s);
// act [n*k, inter] and y [n*k, h] (rows in grouped order): act = bf16(silu(bf16(x·gate)) *
// bf16(x·up)), y = bf16(act·down^T), with gate_up [experts, 2*inter, h] (gate rows first) and
// down [experts, h, inter].
cudaError_t MoeExperts(const bf16* x, const bf16* gate_up, const bf16* down, const int32_t* scratch, int64_t n, int k,
                       int experts, int64_t h, int64_t inter, bf16* act, bf16* y, cudaStream_t s);
// out[t] = MoeFinish of acc = the sum over t's experts in ascending id of weights[t, r] * y[t, r]
// (ScaledRowAdd's order and rounding: the cuBLAS path adds experts 0..E-1 into a zeroed acc).
cudaError_t MoeCombine(const int32_t* ids, const float* weights, const int32_t* scratch, const bf16* y,
                       const bf16* shared, const bf16* gate_logit, int64_t n, int k, int experts, int64_t h, bf16* out,
                       cudaStream_t s);

// ---- token choice (argmax_mask.cu) ----
// ids[r] = the host's ArgmaxF of logits[r, 0..V) (lowest id of the maximum; NaN never wins
// unless at id 0, then 0). scratch: R * ArgmaxSplits(R, V) uint64. R <= 65535, V < 2^31.
int ArgmaxSplits(int64_t R, int64_t V);
cudaError_t ArgmaxRows(const float* logits, int64_t R, int64_t V, uint64_t* scratch, int32_t* ids, cudaStream_t s);
// logits[r, ban[r, j]] = -inf for every ban[r, j] in [0, V); other entries (-1 pads) are skipped.
cudaError_t MaskIds(float* logits, int64_t R, int64_t V, const int32_t* ban, int64_t M, cudaStream_t s);

// ---- sampled token choice (token_choice.cu) ----
// One row's rule, as the engine's TokenRowSpec (runtime/token_choice.h).
struct TokenRow {
  float temperature;  // <= 0: greedy
  int32_t top_k;
  float top_p;
  float min_p;
  uint64_t seed;
  int64_t position;
  int32_t coupled;
  int32_t draft;      // >= 0: a verify row
  int32_t index;
  int32_t stream;
  int32_t q_row;      // -1: one-hot draft
  int32_t pad;
};
size_t ChooseTokensScratchBytes(int64_t R, int64_t V);
// out[r] = (token, accept) per rows[r] (device copy; host_rows the same rows on the host, read for
// their ranges and to skip kernels no row needs). Sampled rows' logits become their processed
// distribution. q: [Q, V] fp32 draft distributions (nullptr when Q == 0). V <= 2^20.
cudaError_t ChooseTokens(float* logits, int64_t R, int64_t V, const TokenRow* rows, const TokenRow* host_rows,
                         const float* q, int64_t Q, void* scratch, int32_t* out, cudaStream_t s);

}  // namespace specd::kernels
