#ifdef SPECD_HAVE_CUDA

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/cuda_backend.h"

namespace specd::cuda_detail {

void CudaBackend::CausalConvSilu(const Tensor& p, const Tensor& w, const GdnDims& d, GdnLayerState& st,
                                 const BatchInfo& b, Tensor& y) {
  Prof prof_(this, "gdn conv + state");
  const Meta& m = UploadMeta(b);
  const int64_t C = d.conv_dim();
  Check(K::CausalConvSilu(B(p), B(w), B(st.conv), m.seqs, m.tok_seq, b.num_tokens, C, d.conv_kernel, B(y), stream_),
        "conv");
  Check(K::ConvStateUpdate(B(p), m.seqs, static_cast<int>(b.seqs.size()), C, d.conv_kernel, B(st.conv),
                           st.log_raw.dim(1), B(st.log_raw), stream_),
        "conv_state");
}

void CudaBackend::GatedDeltaRule(const Tensor& y, const Tensor& braw, const Tensor& araw, const Tensor& a_log,
                                 const Tensor& dt_bias, const GdnDims& d, GdnLayerState& st, const BatchInfo& b,
                                 Tensor& o) {
  Prof prof_(this, "gdn rule (prep, log, recurrence)");
  const Meta& m = UploadMeta(b);
  const int64_t N = b.num_tokens;
  const int hk = d.num_k_heads, hv = d.num_v_heads, dk = d.head_k, dv = d.head_v;
  if (gdn_fused_ && b.max_len <= K::kGdnFusedMaxLen) {
    // Decode / verify / draft steps: prep, log and recurrence in one kernel.
    Check(K::GdnFusedStep(B(y), B(braw), B(araw), a_log.ptr<float>(), dt_bias.ptr<float>(), m.seqs,
                          static_cast<int>(b.seqs.size()), static_cast<int>(b.max_len), hk, hv, dk, dv,
                          st.rec.ptr<float>(), B(o), st.log_k.dim(1), st.log_k.ptr<float>(), st.log_v.ptr<float>(),
                          st.log_g.ptr<float>(), st.log_beta.ptr<float>(), stream_),
          "gdn_fused_step");
    return;
  }
  Tensor q = Empty(DType::kF32, {N, hk, dk}), k = Empty(DType::kF32, {N, hk, dk});
  Tensor v = Empty(DType::kF32, {N, hv, dv}), g = Empty(DType::kF32, {N, hv}), beta = Empty(DType::kF32, {N, hv});
  Check(K::GdnPrep(B(y), B(braw), B(araw), a_log.ptr<float>(), dt_bias.ptr<float>(), N, hk, hv, dk, dv, q.ptr<float>(),
                   k.ptr<float>(), v.ptr<float>(), g.ptr<float>(), beta.ptr<float>(), stream_),
        "gdn_prep");
  Check(K::GdnLogWrite(k.ptr<float>(), v.ptr<float>(), g.ptr<float>(), beta.ptr<float>(), m.seqs,
                       static_cast<int>(b.seqs.size()), static_cast<int>(b.max_len), hk, hv, dk, dv, st.log_k.dim(1),
                       st.log_k.ptr<float>(), st.log_v.ptr<float>(), st.log_g.ptr<float>(), st.log_beta.ptr<float>(),
                       stream_),
        "gdn_log");
  // Long update spans (prefill) take the chunked form; the recurrent kernel skips exactly those
  // (the same predicate on the device), and runs every other span of the batch.
  const int chunk_min = gdn_chunked_ && K::GdnChunkSupports(hk, hv, dk, dv) ? K::kGdnChunkMinLen : 0;
  Check(K::GdnRecurrent(q.ptr<float>(), k.ptr<float>(), v.ptr<float>(), g.ptr<float>(), beta.ptr<float>(), m.seqs,
                        static_cast<int>(b.seqs.size()), hk, hv, dk, dv, st.rec.ptr<float>(), B(o), chunk_min, stream_),
        "gdn_recurrent");
  int64_t longest = 0;
  for (const auto& s : b.seqs) {
    if (K::GdnSpanChunked(static_cast<int>(s.mode), s.len, chunk_min)) longest = std::max(longest, s.len);
  }
  if (longest == 0) return;
  // One scratch serves every chunked span: their launches are ordered on the stream.
  Tensor scratch = Empty(DType::kF32, {K::GdnChunkScratchFloats(longest, hv, dk, dv)});
  for (const auto& s : b.seqs) {
    if (!K::GdnSpanChunked(static_cast<int>(s.mode), s.len, chunk_min)) continue;
    Check(K::GdnChunked(q.ptr<float>(), k.ptr<float>(), v.ptr<float>(), g.ptr<float>(), beta.ptr<float>(), s.offset,
                        s.len, hk, hv, dk, dv, st.rec.ptr<float>() + int64_t{s.slot} * hv * dk * dv,
                        scratch.ptr<float>(), B(o), stream_),
          "gdn_chunked");
  }
}

void CudaBackend::GatedRmsNorm(const Tensor& o, const Tensor& z, const Tensor& w, float eps, Tensor& out) {
  Prof prof_(this, "gated_rmsnorm");
  const int64_t d = w.numel();
  Check(K::GatedRmsNorm(B(o), B(z), B(w), o.numel() / d, static_cast<int>(d), eps, B(out), stream_), "gated_norm");
}

void CudaBackend::GdnCommit(GdnLayerState& st, const GdnDims& d, int slot, int keep, bool from_checkpoint) {
  std::vector<GdnLayerState*> one{&st};
  CommitLayers(one, d, slot, keep, from_checkpoint);
}

void CudaBackend::GdnCommitLayers(std::vector<GdnLayerState>& layers, const GdnDims& d, int slot, int keep,
                                  bool from_checkpoint) {
  std::vector<GdnLayerState*> all;
  for (auto& l : layers) all.push_back(&l);
  for (size_t i = 0; i < all.size(); i += K::kGdnCommitMaxLayers) {
    std::vector<GdnLayerState*> part(all.begin() + i, all.begin() + std::min(all.size(), i + K::kGdnCommitMaxLayers));
    CommitLayers(part, d, slot, keep, from_checkpoint);
  }
}

void CudaBackend::CommitLayers(const std::vector<GdnLayerState*>& layers, const GdnDims& d, int slot, int keep,
                               bool from_checkpoint) {
  Prof prof_(this, "gdn commit (replay)");
  if (layers.empty()) return;
  K::GdnCommitTable tab;
  tab.layers = static_cast<int>(layers.size());
  tab.log_cap = layers[0]->log_k.dim(1);
  for (size_t i = 0; i < layers.size(); ++i) {
    GdnLayerState& st = *layers[i];
    if (from_checkpoint && (!st.ckpt_conv.defined() || !st.ckpt_rec.defined())) {
      Fail("GdnCommit from a checkpoint, but the cache keeps none");
      return;
    }
    tab.layer[i] = K::GdnCommitLayer{B(st.conv),
                                     st.ckpt_conv.defined() ? B(st.ckpt_conv) : nullptr,
                                     B(st.log_raw),
                                     st.rec.ptr<float>(),
                                     st.ckpt_rec.ptr<float>(),
                                     st.log_k.ptr<float>(),
                                     st.log_v.ptr<float>(),
                                     st.log_g.ptr<float>(),
                                     st.log_beta.ptr<float>()};
  }
  Check(K::ConvReplayLayers(tab, slot, keep, from_checkpoint, d.conv_dim(), d.conv_kernel, stream_), "conv_replay");
  Check(K::GdnReplayLayers(tab, slot, keep, from_checkpoint, d.num_k_heads, d.num_v_heads, d.head_k, d.head_v, stream_),
        "gdn_replay");
}

void CudaBackend::GdnCheckpoint(GdnLayerState& st, int slot) {
  const size_t cw = st.conv.nbytes() / st.conv.dim(0), rw = st.rec.nbytes() / st.rec.dim(0);
  Check(cudaMemcpyAsync(static_cast<char*>(st.ckpt_conv.data) + slot * cw, static_cast<char*>(st.conv.data) + slot * cw,
                        cw, cudaMemcpyDeviceToDevice, stream_),
        "ckpt conv");
  Check(cudaMemcpyAsync(static_cast<char*>(st.ckpt_rec.data) + slot * rw, static_cast<char*>(st.rec.data) + slot * rw,
                        rw, cudaMemcpyDeviceToDevice, stream_),
        "ckpt state");
}

void CudaBackend::GdnReset(GdnLayerState& st, int slot) {
  const size_t cw = st.conv.nbytes() / st.conv.dim(0), rw = st.rec.nbytes() / st.rec.dim(0);
  Check(cudaMemsetAsync(static_cast<char*>(st.conv.data) + slot * cw, 0, cw, stream_), "reset conv");
  Check(cudaMemsetAsync(static_cast<char*>(st.rec.data) + slot * rw, 0, rw, stream_), "reset state");
}

}  // namespace specd::cuda_detail

#endif  // SPECD_HAVE_CUDA
