// GDN causal depthwise conv with state: the cached window continues the sequence, so a
// multi-token forward over a populated slot never restarts from zero padding.
#include "common.cuh"
#include "specd/kernels.h"

namespace specd::kernels {
namespace {

// y[t, c] = silu(sum_j w[c, j] * xt(t + 1 + j, c)); xt(r) = window row r (r < K) else p row r - K.
__global__ void CausalConvSiluK(const bf16* p, const bf16* w, const bf16* win, const SeqMeta* seqs,
                                const int32_t* tok_seq, int64_t C, int K, bf16* y) {
  const int64_t t = blockIdx.y;
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= C) return;
  const SeqMeta sm = seqs[tok_seq[t]];
  const int64_t lt = t - sm.offset;  // index inside the span
  const bf16* wnd = win + int64_t{sm.slot} * K * C;
  float acc = 0.f;
  for (int j = 0; j < K; ++j) {
    const int64_t r = lt + 1 + j;
    const float x = r < K ? ToF(wnd[r * C + c]) : ToF(p[(sm.offset + r - K) * C + c]);
    acc += ToF(w[c * K + j]) * x;
  }
  y[t * C + c] = ToB(SiluF(acc));
}

// Window <- last K rows of [window | rows 0..len): row j of the new window is combined row len + j.
__device__ void ShiftWindow(bf16* wnd, const bf16* rows, int64_t len, int64_t C, int K, int64_t c) {
  float nw[16];
  for (int j = 0; j < K; ++j) {
    const int64_t r = len + j;
    nw[j] = r < K ? ToF(wnd[r * C + c]) : ToF(rows[(r - K) * C + c]);
  }
  for (int j = 0; j < K; ++j) wnd[j * C + c] = ToB(nw[j]);
}

__global__ void ConvStateUpdateK(const bf16* p, const SeqMeta* seqs, int64_t C, int K, bf16* win, int64_t log_cap,
                                 bf16* log_raw) {
  const SeqMeta sm = seqs[blockIdx.y];
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= C) return;
  const bf16* rows = p + int64_t{sm.offset} * C;
  if (MetaWritesLog(sm.mode)) {
    bf16* dst = log_raw + (int64_t{sm.slot} * log_cap + sm.log_offset) * C;
    for (int t = 0; t < sm.len; ++t) dst[int64_t{t} * C + c] = rows[int64_t{t} * C + c];
  }
  if (MetaWritesState(sm.mode)) ShiftWindow(win + int64_t{sm.slot} * K * C, rows, sm.len, C, K, c);
}

__global__ void ConvWindowReplayK(bf16* win, const bf16* log_raw, int keep, int64_t C, int K) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c < C) ShiftWindow(win, log_raw, keep, C, K, c);
}

// Every GDN layer's window of one slot in one launch: grid (layer, channel block); restores the
// checkpoint first when asked, then shifts in the first `keep` logged rows.
__global__ void ConvReplayLayersK(GdnCommitTable tab, int slot, int keep, bool from_ckpt, int64_t C, int K) {
  const int64_t c = blockIdx.y * int64_t{blockDim.x} + threadIdx.x;
  if (c >= C) return;
  const GdnCommitLayer& L = tab.layer[blockIdx.x];
  bf16* wnd = L.conv + int64_t{slot} * K * C;
  if (from_ckpt) {
    const bf16* ck = L.ckpt_conv + int64_t{slot} * K * C;
    for (int j = 0; j < K; ++j) wnd[j * C + c] = ck[j * C + c];
  }
  if (keep > 0) ShiftWindow(wnd, L.log_raw + int64_t{slot} * tab.log_cap * C, keep, C, K, c);
}

}  // namespace

cudaError_t ConvReplayLayers(const GdnCommitTable& tab, int slot, int keep, bool from_checkpoint, int64_t C, int K,
                             cudaStream_t s) {
  SPECD_CHECK_ARG(tab.layers > 0 && tab.layers <= kGdnCommitMaxLayers && slot >= 0 && keep >= 0 && C > 0 && K > 0 &&
                  K <= 16 && keep <= tab.log_cap);
  if (keep == 0 && !from_checkpoint) return cudaSuccess;
  ConvReplayLayersK<<<dim3(static_cast<unsigned>(tab.layers), Blocks(C, 256)), 256, 0, s>>>(tab, slot, keep,
                                                                                             from_checkpoint, C, K);
  return LaunchStatus();
}

cudaError_t CausalConvSilu(const bf16* p, const bf16* w, const bf16* win, const SeqMeta* seqs, const int32_t* tok_seq,
                           int64_t n, int64_t C, int K, bf16* y, cudaStream_t s) {
  SPECD_CHECK_ARG(p && w && win && seqs && tok_seq && y && n >= 0 && C > 0 && K > 0 && K <= 16 && n < 65536);
  if (n == 0) return cudaSuccess;
  CausalConvSiluK<<<dim3(Blocks(C, 256), static_cast<unsigned>(n)), 256, 0, s>>>(p, w, win, seqs, tok_seq, C, K, y);
  return LaunchStatus();
}

cudaError_t ConvStateUpdate(const bf16* p, const SeqMeta* seqs, int nseq, int64_t C, int K, bf16* win,
                            int64_t log_cap, bf16* log_raw, cudaStream_t s) {
  SPECD_CHECK_ARG(p && seqs && win && log_raw && nseq >= 0 && C > 0 && K > 0 && K <= 16 && log_cap > 0);
  if (nseq == 0) return cudaSuccess;
  ConvStateUpdateK<<<dim3(Blocks(C, 256), static_cast<unsigned>(nseq)), 256, 0, s>>>(p, seqs, C, K, win, log_cap,
                                                                                       log_raw);
  return LaunchStatus();
}

cudaError_t ConvWindowReplay(bf16* win, const bf16* log_raw, int keep, int64_t C, int K, cudaStream_t s) {
  SPECD_CHECK_ARG(win && log_raw && keep >= 0 && C > 0 && K > 0 && K <= 16);
  if (keep == 0) return cudaSuccess;
  ConvWindowReplayK<<<Blocks(C, 256), 256, 0, s>>>(win, log_raw, keep, C, K);
  return LaunchStatus();
}

}  // namespace specd::kernels
