// The MTP head's forward (docs/mtp.md), on the same op set as the target. For each row:
//   z = fc_embedding · N_emb(E[x]) + fc_hidden · N_hid(h)      (= fc · [N_emb(E[x]) ; N_hid(h)])
//   z = z + Attn(N_in(z));  z = z + Ffn(N_post(z))            (one gated full-attention layer)
//   g = N_mtp(z);  logits = lm_head · g
// where h is the target's final-normed hidden state (or, for a chained draft step, the head's own
// previous g). Every N is the (1 + w) RMSNorm. The attention reads and writes the head's own
// cache, slot by slot, exactly like a target layer (so it is logged and rolled back the same way).
#include "qwen35/model.h"

namespace specd {

StatusOr<std::unique_ptr<ModelCache>> Qwen35Model::NewMtpCache(const CacheOptions& opt) const {
  ModelConfig c = cfg_;
  c.num_hidden_layers = 1;
  c.layer_types = {LayerType::kFullAttention};
  return ModelCache::Create(c, backend_, opt);
}

StatusOr<Qwen35Model::MtpOutput> Qwen35Model::MtpForward(const std::vector<SeqInput>& seqs, const Tensor& hidden,
                                                         ModelCache& mtp_cache, bool want_logits) {
  if (!mtp_) return FailedPrecondition("the model has no MTP head loaded (LoadMtpHead)");
  SPECD_ASSIGN_OR_RETURN(PreparedBatch p, PrepareBatch(seqs, mtp_cache));
  if (hidden.dim(0) != p.b.num_tokens || hidden.dim(1) != cfg_.hidden_size) {
    return InvalidArgument("MTP input: {} hidden rows of width {} for {} tokens of width {}", hidden.dim(0),
                           hidden.dim(1), p.b.num_tokens, cfg_.hidden_size);
  }
  Backend& be = *backend_;
  const int64_t real_tokens = p.b.num_tokens, real_rows = static_cast<int64_t>(p.logit_rows.size());
  MtpOutput out;
  out.logits = std::move(p.out);
  try {
    // Draft steps (short spans) run as graphs, padded to graph shapes like the target's. A graph
    // reads its hidden rows from one fixed buffer, so they are copied there first; the buffer
    // grows when a batch needs more rows, and the graphs that read the old one go with it.
    const bool graphable = Capturable(p.b, p.b.num_tokens) && be.CapturesGraphs();
    Tensor in = hidden;
    std::string key;
    if (graphable) {
      PadForGraph(mtp_cache, p.b, p.ids, p.logit_rows);
      if (!mtp_in_.defined() || mtp_in_.dim(0) < p.b.num_tokens) {
        be.DropGraphs(fmt::format(":mtp{}:", id_));
        mtp_in_ = be.Alloc(be.act_dtype(), {std::max<int64_t>(p.b.num_tokens, 64), cfg_.hidden_size});
      }
      Tensor dst = mtp_in_.Rows(0, real_tokens);
      be.CopyRows(hidden, dst);
      // Dummy spans read zero rows: the same every time, so an MoE head routes them alike.
      if (p.b.num_tokens > real_tokens) {
        Tensor pad = mtp_in_.Rows(real_tokens, p.b.num_tokens - real_tokens);
        be.Zero(pad);
      }
      in = mtp_in_.Rows(0, p.b.num_tokens);
      key = fmt::format(":mtp{}:c{}:n{}:s{}:l{}:r{}:{}", id_, mtp_cache.id(), p.b.num_tokens, p.b.seqs.size(),
                        p.b.max_len, p.logit_rows.size(), want_logits ? "logits" : "cache");
    }
    Tensor tok, rows;
    be.StageBatch(p.b, p.ids, p.logit_rows, &tok, &rows);
    const int64_t R = static_cast<int64_t>(p.logit_rows.size());
    SPECD_ASSIGN_OR_RETURN(std::vector<Tensor> outs, RunGraphed(key, [&]() {
                             Tensor normed;
                             Tensor logits = MtpOps(p.b, tok, in, rows, R, mtp_cache, want_logits ? &normed : nullptr);
                             return want_logits ? std::vector<Tensor>{logits, normed} : std::vector<Tensor>{};
                           }));
    if (want_logits) {
      out.logits.logits = outs.at(0).Rows(0, real_rows);
      out.hidden = outs.at(1).Rows(0, real_rows);
    }
  } catch (const std::bad_alloc&) {
    be.ReleaseCachedMemory();
    return ResourceExhausted("{} memory exhausted during an MTP forward of {} tokens", be.name(), real_tokens);
  }
  SPECD_RETURN_IF_ERROR(be.TakeError());
  for (const auto& s : seqs) mtp_cache.Advance(s.slot, s.mode, static_cast<int64_t>(s.tokens.size()));
  return out;
}

Tensor Qwen35Model::MtpOps(const BatchInfo& b, const Tensor& tok, const Tensor& hidden, const Tensor& rows,
                           int64_t R, ModelCache& cache, Tensor* normed) {
  Backend& be = *backend_;
  const MtpWeights& m = *mtp_;
  const LayerWeights& L = m.layer;
  const DType act = be.act_dtype(), res = be.residual_dtype();
  const int64_t N = b.num_tokens, H = cfg_.hidden_size;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);

  Tensor e = be.Empty(res, {N, H});
  be.Embedding(w_.embed, tok, e);
  Tensor en = be.Empty(act, {N, H});
  be.RmsNorm(e, m.pre_fc_norm_embedding, eps, /*unit_offset=*/true, en);
  Tensor hn = be.Empty(act, {N, H});
  be.RmsNorm(hidden, m.pre_fc_norm_hidden, eps, true, hn);
  Tensor ze = be.Empty(act, {N, H});
  be.Gemm(en, m.fc_embedding, ze);
  Tensor zh = be.Empty(act, {N, H});
  be.Gemm(hn, m.fc_hidden, zh);
  // The layer's residual stream, in the residual dtype (fp32 on CUDA): both halves are added
  // into it, the form every backend has (residual += branch).
  Tensor z = be.Empty(res, {N, H});
  be.Zero(z);
  be.Add(z, ze, z);
  be.Add(z, zh, z);

  Tensor a = be.Empty(act, {N, H});
  Tensor mix = be.Empty(act, {N, H});
  be.RmsNorm(z, L.input_norm, eps, true, a);
  AttnLayer(L, cache.attn()[cache.state_index(0)], a, b, mix);
  // Rows that only fill the cache: their K/V are written; nothing reads the rest of the layer.
  if (normed == nullptr) return Tensor{};
  be.AddRmsNorm(z, mix, L.post_norm, eps, true, a);
  Ffn(L, a, mix);
  be.Add(z, mix, z);

  Tensor zs = be.Empty(res, {R, H});
  be.GatherRows(z, rows, zs);
  *normed = be.Empty(act, {R, H});
  be.RmsNorm(zs, m.norm, eps, true, *normed);
  const Tensor& lm_head = mtp_lm_head_.defined() ? mtp_lm_head_ : w_.lm_head;
  Tensor logits = be.Empty(DType::kF32, {R, lm_head.dim(0)});
  be.Gemm(*normed, lm_head, logits);
  return logits;
}

Status Qwen35Model::SetMtpVocab(std::vector<int32_t> ids) {
  if (!mtp_) return FailedPrecondition("the model has no MTP head loaded (LoadMtpHead)");
  Backend& be = *backend_;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= cfg_.vocab_size || (i > 0 && ids[i] <= ids[i - 1])) {
      return InvalidArgument("MTP vocabulary: ids must be sorted, distinct and in [0, {})", cfg_.vocab_size);
    }
  }
  be.DropGraphs(fmt::format(":mtp{}:", id_));  // they read the old lm_head
  mtp_lm_head_ = Tensor{};
  mtp_vocab_ = std::move(ids);
  if (mtp_vocab_.empty()) return Status::Ok();
  const std::vector<int64_t> rows(mtp_vocab_.begin(), mtp_vocab_.end());
  Tensor idx = be.Upload(rows.data(), DType::kI64, {static_cast<int64_t>(rows.size())}, DType::kI64);
  mtp_lm_head_ = be.Empty(w_.lm_head.dtype, {idx.dim(0), cfg_.hidden_size});
  be.GatherRows(w_.lm_head, idx, mtp_lm_head_);
  return be.TakeError();
}

}  // namespace specd
