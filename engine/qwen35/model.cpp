#include "qwen35/model.h"

#include <atomic>
#include <utility>

#include "checkpoint/safetensors.h"
#include "qwen35/graph_padding.h"

namespace specd {

namespace {
std::atomic<uint64_t> g_next_model_id{1};
}  // namespace

Qwen35Model::Qwen35Model(ModelConfig cfg, ModelWeights w, Backend* be)
    : cfg_(std::move(cfg)), w_(std::move(w)), backend_(be), id_(g_next_model_id++) {}

Qwen35Model::~Qwen35Model() {
  backend_->DropGraphs(fmt::format(":m{}:", id_));
  backend_->DropGraphs(fmt::format(":mtp{}:", id_));
}

Status Qwen35Model::LoadMtpHead(const std::string& dir) {
  SPECD_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(dir));
  SPECD_ASSIGN_OR_RETURN(MtpWeights m, LoadMtpWeights(cfg_, *ckpt, backend_, load_options_));
  SetMtpHead(std::move(m));
  return Status::Ok();
}

void Qwen35Model::SetMtpHead(MtpWeights m) {
  backend_->DropGraphs(fmt::format(":mtp{}:", id_));  // they read the old head's weights
  mtp_ = std::move(m);
}

StatusOr<std::unique_ptr<Qwen35Model>> Qwen35Model::Load(const std::string& dir, Backend* backend,
                                                         const LoadOptions& opt) {
  SPECD_ASSIGN_OR_RETURN(ModelConfig cfg, LoadModelConfig(dir));
  SPECD_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(dir));
  SPECD_ASSIGN_OR_RETURN(ModelWeights w, LoadWeights(cfg, *ckpt, backend, opt));
  auto m = std::unique_ptr<Qwen35Model>(new Qwen35Model(std::move(cfg), std::move(w), backend));
  m->load_options_ = opt;
  return m;
}

std::unique_ptr<Qwen35Model> Qwen35Model::Random(const ModelConfig& cfg, Backend* backend, uint64_t seed) {
  return std::unique_ptr<Qwen35Model>(new Qwen35Model(cfg, RandomWeights(cfg, backend, seed), backend));
}

StatusOr<Qwen35Model::PreparedBatch> Qwen35Model::PrepareBatch(const std::vector<SeqInput>& seqs,
                                                                ModelCache& cache) const {
  // ---- validate everything before touching any state ----
  PreparedBatch p;
  BatchInfo& b = p.b;
  std::vector<int32_t>& ids = p.ids;
  ForwardOutput& out = p.out;
  std::vector<int64_t>& logit_rows = p.logit_rows;
  std::vector<bool> seen(static_cast<size_t>(cache.num_slots()), false);
  for (const auto& s : seqs) {
    if (s.slot < 0 || s.slot >= cache.num_slots() || !cache.in_use(s.slot)) {
      return InvalidArgument("slot {} is not an allocated cache slot", s.slot);
    }
    if (seen[s.slot]) return InvalidArgument("slot {} appears twice in one batch", s.slot);
    seen[s.slot] = true;
    if (s.tokens.empty()) return InvalidArgument("empty token list for slot {}", s.slot);
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= cfg_.vocab_size) {
        return InvalidArgument("token id {} is out of the vocabulary [0, {})", t, cfg_.vocab_size);
      }
    }
    const int64_t len = static_cast<int64_t>(s.tokens.size());
    SeqSpan sp;
    sp.slot = s.slot;
    sp.offset = b.num_tokens;
    sp.len = len;
    sp.n_past = cache.length(s.slot);
    sp.mode = s.mode;
    sp.all_logits = s.all_logits;
    sp.log_offset = cache.log_count(s.slot);
    if (sp.n_past + len > cache.options().max_ctx) {
      return ResourceExhausted("slot {}: {} + {} tokens exceed the context capacity {}", s.slot, sp.n_past,
                               len, cache.options().max_ctx);
    }
    if (WritesLog(s.mode) && !cache.logging(s.slot)) {
      return FailedPrecondition("slot {}: a logging forward needs BeginLog first", s.slot);
    }
    if (s.mode == StateMode::kLog && sp.log_offset != 0) {
      return FailedPrecondition("slot {}: a verify forward must be the only one in its speculation step", s.slot);
    }
    if (WritesLog(s.mode) && sp.log_offset + len > cache.options().log_capacity) {
      return ResourceExhausted("slot {}: {} logged tokens exceed the log capacity {}", s.slot,
                               sp.log_offset + len, cache.options().log_capacity);
    }
    b.seqs.push_back(sp);
    b.num_tokens += len;
    b.max_len = std::max(b.max_len, len);
    ids.insert(ids.end(), s.tokens.begin(), s.tokens.end());
    out.row0.push_back(static_cast<int64_t>(logit_rows.size()));
    if (s.all_logits) {
      for (int64_t t = 0; t < len; ++t) logit_rows.push_back(sp.offset + t);
      out.rows.push_back(len);
    } else {
      logit_rows.push_back(sp.offset + len - 1);
      out.rows.push_back(1);
    }
  }
  if (b.seqs.empty()) return InvalidArgument("empty batch");
  // KV blocks for every row a span writes, a verify's tail included; the last check, and all or
  // nothing, so a pool that cannot serve the batch leaves every slot as it was.
  std::vector<std::pair<int, int64_t>> kv_rows;
  for (const auto& sp : b.seqs) kv_rows.emplace_back(sp.slot, sp.n_past + sp.len);
  SPECD_RETURN_IF_ERROR(cache.ReserveKv(kv_rows));
  // Before the ops and any graph replay: both read the table from the cache's fixed tensor.
  cache.SyncBlockTable();
  return p;
}

StatusOr<ForwardOutput> Qwen35Model::Forward(const std::vector<SeqInput>& seqs, ModelCache& cache) {
  SPECD_ASSIGN_OR_RETURN(PreparedBatch p, PrepareBatch(seqs, cache));
  BatchInfo& b = p.b;
  std::vector<int32_t>& ids = p.ids;
  ForwardOutput& out = p.out;
  std::vector<int64_t>& logit_rows = p.logit_rows;
  Backend& be = *backend_;
  const int64_t real_rows = static_cast<int64_t>(logit_rows.size());
  // Decode and verify steps (short spans) replay captured graphs; prefill chunks (long, varied)
  // run op by op, and so does MoE where the backend routes through the host.
  const int64_t real_tokens = b.num_tokens;
  const bool graphable = Capturable(b, b.num_tokens);
  if (graphable) PadForGraph(cache, b, ids, logit_rows);
  try {
    SPECD_ASSIGN_OR_RETURN(out.logits, RunGraphOrOps(b, ids, logit_rows, cache, graphable));
  } catch (const std::bad_alloc&) {
    // Ops already issued may have changed the slots' state: the step's sequences are lost
    // (SpeculativeEngine fails them), the model and the other slots are fine.
    be.ReleaseCachedMemory();
    return ResourceExhausted("{} memory exhausted during a forward of {} tokens", be.name(), b.num_tokens);
  }
  if (out.logits.dim(0) != real_rows) out.logits = out.logits.Rows(0, real_rows);  // the dummies' rows
  if (keep_hidden_ && last_hidden_.dim(0) != real_tokens) last_hidden_ = last_hidden_.Rows(0, real_tokens);
  for (const auto& s : seqs) cache.Advance(s.slot, s.mode, static_cast<int64_t>(s.tokens.size()));
  return out;
}

bool Qwen35Model::Capturable(const BatchInfo& b, int64_t tokens) const {
  return b.max_len <= kMaxGraphTokens &&
         (!cfg_.is_moe || backend_->MoeFfnCapturable(tokens, cfg_.hidden_size, cfg_.moe_intermediate_size,
                                                     cfg_.num_experts, cfg_.num_experts_per_tok));
}

void Qwen35Model::PadForGraph(const ModelCache& cache, BatchInfo& b, std::vector<int32_t>& ids,
                              std::vector<int64_t>& logit_rows) const {
  const bool pad = padding_ == GraphPaddingMode::kAlways ||
                   (padding_ == GraphPaddingMode::kAuto && backend_->CapturesGraphs());
  if (!pad) return;
  const auto plan = PlanGraphPadding(static_cast<int64_t>(b.seqs.size()), b.num_tokens, b.max_len,
                                     static_cast<int64_t>(logit_rows.size()),
                                     std::min<int64_t>(cache.pad_rows(), cache.options().log_capacity));
  if (plan && Capturable(b, plan->tokens)) AddDummySpans(*plan, cache, b, ids, logit_rows);
}

void Qwen35Model::AddDummySpans(const GraphPadding& plan, const ModelCache& cache, BatchInfo& b,
                                std::vector<int32_t>& ids, std::vector<int64_t>& logit_rows) const {
  for (int64_t len : plan.dummy_lens) {
    SeqSpan sp;
    sp.slot = cache.pad_slot();
    sp.offset = b.num_tokens;
    sp.len = len;
    sp.n_past = 0;
    sp.mode = StateMode::kLog;  // reads the pad slot's (zero) state, writes only its log and KV rows
    sp.log_offset = 0;
    sp.all_logits = plan.dummy_all_logits;
    for (int64_t t = plan.dummy_all_logits ? 0 : len - 1; t < len; ++t) logit_rows.push_back(sp.offset + t);
    ids.insert(ids.end(), static_cast<size_t>(len), 0);
    b.seqs.push_back(sp);
    b.num_tokens += len;
  }
}

StatusOr<std::vector<Tensor>> Qwen35Model::RunGraphed(const std::string& key,
                                                       const std::function<std::vector<Tensor>()>& ops) {
  Backend& be = *backend_;
  std::vector<Tensor> outs;
  if (!key.empty()) {
    if (be.ReplayGraphOutputs(key, &outs)) {
      SPECD_RETURN_IF_ERROR(be.TakeError());
      return outs;
    }
    if (be.BeginGraphCapture(key)) {
      Status captured = Status::Ok();
      try {
        captured = be.EndGraphCaptureOutputs(key, ops());
      } catch (const std::bad_alloc&) {
        // Nothing of a capture has run: give memory back and run the ops once more, uncaptured.
        be.AbortGraphCapture();
        be.ReleaseCachedMemory();
        captured = ResourceExhausted("graph capture ran out of memory");
      }
      if (captured.ok() && be.ReplayGraphOutputs(key, &outs)) {
        SPECD_RETURN_IF_ERROR(be.TakeError());
        return outs;
      }
      // A failed capture ran nothing either: the ops below do the forward.
    }
  }
  outs = ops();
  SPECD_RETURN_IF_ERROR(be.TakeError());
  return outs;
}

StatusOr<Tensor> Qwen35Model::RunGraphOrOps(const BatchInfo& b, const std::vector<int32_t>& ids,
                                            const std::vector<int64_t>& logit_rows, ModelCache& cache,
                                            bool graphable) {
  Backend& be = *backend_;
  Tensor tok, rows;
  be.StageBatch(b, ids, logit_rows, &tok, &rows);
  const int64_t R = static_cast<int64_t>(logit_rows.size());
  // With keep_hidden the graph has a second output, the hidden rows (so it is another graph).
  const std::string key = graphable ? GraphKey(b, R, cache) + (keep_hidden_ ? ":h" : "") : std::string();
  SPECD_ASSIGN_OR_RETURN(std::vector<Tensor> outs, RunGraphed(key, [&]() {
                           Tensor logits = RunOps(b, tok, rows, R, cache);
                           return keep_hidden_ ? std::vector<Tensor>{logits, last_hidden_}
                                               : std::vector<Tensor>{logits};
                         }));
  if (keep_hidden_) last_hidden_ = outs.at(1);
  return outs.at(0);
}

std::string Qwen35Model::GraphKey(const BatchInfo& b, int64_t rows, const ModelCache& cache) const {
  // Everything else a graph's kernels need (slots, lengths, offsets, modes, log offsets,
  // positions) is in the staged layout they read: one graph serves any batch of this shape.
  return fmt::format(":m{}:c{}:n{}:s{}:l{}:r{}", id_, cache.id(), b.num_tokens, b.seqs.size(), b.max_len, rows);
}

Tensor Qwen35Model::RunOps(const BatchInfo& b, const Tensor& tok, const Tensor& rows, int64_t R, ModelCache& cache) {
  Backend& be = *backend_;
  const DType act = be.act_dtype();
  const int64_t N = b.num_tokens, H = cfg_.hidden_size;
  const DType res = be.residual_dtype();
  Tensor h = be.Empty(res, {N, H});
  be.Embedding(w_.embed, tok, h);
  Tensor a = be.Empty(act, {N, H});
  Tensor mix = be.Empty(act, {N, H});
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  const int nl = cfg_.num_hidden_layers;
  be.RmsNorm(h, w_.layers[0].input_norm, eps, /*unit_offset=*/true, a);
  for (int i = 0; i < nl; ++i) {
    const auto& L = w_.layers[i];
    if (L.type == LayerType::kLinearAttention) {
      GdnLayer(L, cache.gdn()[cache.state_index(i)], a, b, mix);
    } else {
      AttnLayer(L, cache.attn()[cache.state_index(i)], a, b, mix);
    }
    be.AddRmsNorm(h, mix, L.post_norm, eps, true, a);
    Ffn(L, a, mix);
    // The residual add, fused with the next layer's input norm.
    if (i + 1 < nl) {
      be.AddRmsNorm(h, mix, w_.layers[i + 1].input_norm, eps, true, a);
    } else {
      be.Add(h, mix, h);
    }
  }
  if (keep_hidden_) {
    // What the MTP head reads: every token's final-normed row (a prefill chunk fills the head's
    // cache for all its positions, not only the logit rows); a graph's second output. The
    // logits below take the same path as without, so they keep their bits.
    last_hidden_ = be.Empty(act, {N, H});
    be.RmsNorm(h, w_.final_norm, eps, true, last_hidden_);
  }
  Tensor hs = be.Empty(res, {R, H});
  be.GatherRows(h, rows, hs);
  Tensor hn = be.Empty(act, {R, H});
  be.RmsNorm(hs, w_.final_norm, eps, true, hn);
  Tensor logits = be.Empty(DType::kF32, {R, cfg_.vocab_size});
  be.Gemm(hn, w_.lm_head, logits);
  return logits;
}

void Qwen35Model::GdnLayer(const LayerWeights& L, GdnLayerState& st, const Tensor& a, const BatchInfo& b,
                           Tensor& out) {
  Backend& be = *backend_;
  const DType act = be.act_dtype();
  const int64_t N = b.num_tokens;
  const GdnDims d{cfg_.linear_num_key_heads, cfg_.linear_num_value_heads, cfg_.linear_key_head_dim,
                  cfg_.linear_value_head_dim, cfg_.linear_conv_kernel_dim};
  const int64_t C = d.conv_dim(), Vd = int64_t{d.num_v_heads} * d.head_v;
  Tensor p = be.Empty(act, {N, C});
  Tensor z = be.Empty(act, {N, Vd});
  Tensor braw = be.Empty(act, {N, d.num_v_heads});
  Tensor araw = be.Empty(act, {N, d.num_v_heads});
  be.GemmMulti(a, L.gdn.in_proj, {&p, &z, &braw, &araw});
  Tensor y = be.Empty(act, {N, C});
  be.CausalConvSilu(p, L.gdn.conv, d, st, b, y);
  Tensor o = be.Empty(act, {N, Vd});
  be.GatedDeltaRule(y, braw, araw, L.gdn.a_log, L.gdn.dt_bias, d, st, b, o);
  Tensor on = be.Empty(act, {N, Vd});
  be.GatedRmsNorm(o, z, L.gdn.norm, static_cast<float>(cfg_.rms_norm_eps), on);
  be.Gemm(on, L.gdn.out, out);
}

void Qwen35Model::AttnLayer(const LayerWeights& L, AttnLayerState& st, const Tensor& a, const BatchInfo& b,
                            Tensor& out) {
  Backend& be = *backend_;
  const DType act = be.act_dtype();
  const int64_t N = b.num_tokens;
  const int hq = cfg_.num_attention_heads, hkv = cfg_.num_key_value_heads, D = cfg_.head_dim;
  const AttnDims d{hq, hkv, D, cfg_.rotary_dim(), static_cast<float>(cfg_.rope_theta)};
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  Tensor q2 = be.Empty(act, {N, 2LL * hq * D});
  Tensor k = be.Empty(act, {N, int64_t{hkv} * D});
  Tensor v = be.Empty(act, {N, int64_t{hkv} * D});
  be.GemmMulti(a, L.attn.qkv, {&q2, &k, &v});
  Tensor q = be.Empty(act, {N, int64_t{hq} * D});
  Tensor gate = be.Empty(act, {N, int64_t{hq} * D});
  be.QkNormRope(q2, k, L.attn.q_norm, L.attn.k_norm, eps, d, b, q, gate);
  Tensor o = be.Empty(act, {N, int64_t{hq} * D});
  be.Attention(q, k, v, d, st, b, o);
  be.SigmoidMul(o, gate, o);
  be.Gemm(o, L.attn.o, out);
}

void Qwen35Model::Ffn(const LayerWeights& L, const Tensor& m, Tensor& out) {
  Backend& be = *backend_;
  if (cfg_.is_moe) {
    be.MoeFfn(m, L.moe, out);
    return;
  }
  const DType act = be.act_dtype();
  const int64_t N = m.dim(0), I = cfg_.intermediate_size;
  Tensor g = be.Empty(act, {N, I});
  be.GemmSwiGlu(m, L.mlp.gate_up, g);
  be.Gemm(g, L.mlp.down, out);
}

}  // namespace specd
