#include "qwen35/weights.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <spdlog/spdlog.h>

#include "checkpoint/fp8_weights.h"
#include "checkpoint/safetensors.h"

namespace specd {
namespace {

// Ends a load's uploads on every path: early error returns free the staging too; Finish also
// returns an upload's failure (and any device error the load hit).
class UploadsDone {
 public:
  explicit UploadsDone(Backend* be) : be_(be) {}
  ~UploadsDone() {
    if (!done_) (void)be_->FinishUploads();
  }
  Status Finish() {
    done_ = true;
    SPECD_RETURN_IF_ERROR(be_->FinishUploads());
    return be_->TakeError();
  }

 private:
  Backend* be_;
  bool done_ = false;
};

class Loader {
 public:
  Loader(const ModelConfig& cfg, const Checkpoint& ckpt, Backend* be, const LoadOptions& opt)
      : cfg_(cfg), ckpt_(ckpt), be_(be), opt_(opt) {
    // Real Qwen3.5 releases nest the text model under model.language_model.; text-only
    // checkpoints use model. directly.
    prefix_ = ckpt.Find("model.language_model.embed_tokens.weight") != nullptr ? "model.language_model."
                                                                                : "model.";
  }
  // Names under another root (the MTP head's "mtp.", the same in both layouts).
  Loader(const ModelConfig& cfg, const Checkpoint& ckpt, Backend* be, const LoadOptions& opt, std::string prefix)
      : cfg_(cfg), ckpt_(ckpt), be_(be), opt_(opt), prefix_(std::move(prefix)) {}

  // Every weight goes through here: FP8 ones dequantized, and with --quantize fp8 the
  // projections of a float checkpoint rounded to FP8 as a quantized checkpoint would hold them.
  StatusOr<std::vector<float>> Read(const std::string& full, const std::vector<int64_t>& shape) {
    SPECD_ASSIGN_OR_RETURN(std::vector<float> v, ReadWeightF32(ckpt_, full, shape, cfg_.fp8));
    const TensorInfo* t = ckpt_.Find(full);
    if (t->dtype == DType::kF8E4M3) {
      ++fp8_tensors_;
    } else if (opt_.quantize_fp8 && IsFp8Projection(full) && t->shape.size() >= 2) {
      RoundTripFp8(v, t->shape[t->shape.size() - 2], t->shape.back(), *opt_.quantize_fp8);
      ++fp8_tensors_;
    }
    return v;
  }

  // Writes weight `full` (checked to have `shape`) into dst from element `offset` on. A float
  // tensor stored as is goes from the mapped file to the backend without a host copy
  // (Backend::UploadInto converts on the way); FP8 ones, ones --quantize fp8 rounds, and every
  // error case go through Read.
  Status Write(const std::string& full, const std::vector<int64_t>& shape, Tensor& dst, int64_t offset) {
    const TensorInfo* t = ckpt_.Find(full);
    const bool as_stored = t != nullptr && t->shape == shape &&
                           (t->dtype == DType::kF32 || t->dtype == DType::kBF16 || t->dtype == DType::kF16) &&
                           ckpt_.Find(Fp8ScaleName(full)) == nullptr && !(opt_.quantize_fp8 && IsFp8Projection(full));
    if (as_stored) {
      be_->UploadInto(dst, offset, t->data, t->dtype, t->numel());
      return Status::Ok();
    }
    SPECD_ASSIGN_OR_RETURN(std::vector<float> v, Read(full, shape));
    be_->UploadInto(dst, offset, v.data(), DType::kF32, static_cast<int64_t>(v.size()));
    return Status::Ok();
  }

  StatusOr<Tensor> Get(const std::string& name, std::vector<int64_t> shape, bool backbone = true) {
    const std::string full = backbone ? prefix_ + name : name;
    // Stored shapes like conv1d [C, 1, K] collapse to what the op reads (the caller reshapes).
    Tensor t = be_->Empty(be_->act_dtype(), shape);
    SPECD_RETURN_IF_ERROR(Write(full, shape, t, 0));
    bytes_ += static_cast<int64_t>(t.nbytes());
    return t;
  }
  // Fp32 parameters that stay fp32 on every backend (gate math is fp32, docs/DESIGN-NOTES.md, the forward).
  StatusOr<Tensor> GetF32(const std::string& name, std::vector<int64_t> shape) {
    Tensor t = be_->Empty(DType::kF32, shape);
    SPECD_RETURN_IF_ERROR(Write(prefix_ + name, shape, t, 0));
    bytes_ += static_cast<int64_t>(t.nbytes());
    return t;
  }
  // Tensors of the same width stored back to back in one allocation (one weight stream for
  // projections of the same input); returns the whole and sets each part to its view.
  StatusOr<Tensor> GetStacked(const std::vector<std::pair<std::string, std::vector<int64_t>>>& parts,
                              const std::vector<Tensor*>& views) {
    int64_t rows = 0;
    const int64_t width = parts.front().second[1];
    for (const auto& part : parts) rows += part.second[0];
    Tensor t = be_->Empty(be_->act_dtype(), {rows, width});
    int64_t r0 = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      SPECD_RETURN_IF_ERROR(Write(prefix_ + parts[i].first, parts[i].second, t, r0 * width));
      *views[i] = t.Rows(r0, parts[i].second[0]);
      r0 += parts[i].second[0];
    }
    bytes_ += static_cast<int64_t>(t.nbytes());
    return t;
  }
  // A [rows, 2 * cols] tensor as its left and right column halves, each [rows, cols].
  Status GetColumnHalves(const std::string& name, int64_t rows, int64_t cols, Tensor* left, Tensor* right) {
    SPECD_ASSIGN_OR_RETURN(std::vector<float> v, Read(prefix_ + name, {rows, 2 * cols}));
    std::vector<float> l(static_cast<size_t>(rows * cols)), r(static_cast<size_t>(rows * cols));
    for (int64_t i = 0; i < rows; ++i) {
      std::copy_n(v.begin() + i * 2 * cols, cols, l.begin() + i * cols);
      std::copy_n(v.begin() + i * 2 * cols + cols, cols, r.begin() + i * cols);
    }
    *left = be_->Upload(l.data(), DType::kF32, {rows, cols}, be_->act_dtype());
    *right = be_->Upload(r.data(), DType::kF32, {rows, cols}, be_->act_dtype());
    bytes_ += static_cast<int64_t>(left->nbytes() + right->nbytes());
    return Status::Ok();
  }
  bool Has(const std::string& name) const { return ckpt_.Find(prefix_ + name) != nullptr; }
  const std::string& prefix() const { return prefix_; }
  int64_t bytes() const { return bytes_; }
  int fp8_tensors() const { return fp8_tensors_; }

  // MoE experts: fused 3-D tensors, or per-expert 2-D ones fused here (gate rows, then up).
  Status Experts(const std::string& p, MoeTensors& m) {
    const int64_t E = cfg_.num_experts, Ie = cfg_.moe_intermediate_size, H = cfg_.hidden_size;
    if (Has(p + "experts.gate_up_proj")) {
      SPECD_ASSIGN_OR_RETURN(m.gate_up, Get(p + "experts.gate_up_proj", {E, 2 * Ie, H}));
      SPECD_ASSIGN_OR_RETURN(m.down, Get(p + "experts.down_proj", {E, H, Ie}));
      return Status::Ok();
    }
    m.gate_up = be_->Empty(be_->act_dtype(), {E, 2 * Ie, H});
    m.down = be_->Empty(be_->act_dtype(), {E, H, Ie});
    for (int64_t e = 0; e < E; ++e) {
      const std::string q = fmt::format("{}{}experts.{}.", prefix_, p, e);
      SPECD_RETURN_IF_ERROR(Write(q + "gate_proj.weight", {Ie, H}, m.gate_up, e * 2 * Ie * H));
      SPECD_RETURN_IF_ERROR(Write(q + "up_proj.weight", {Ie, H}, m.gate_up, e * 2 * Ie * H + Ie * H));
      SPECD_RETURN_IF_ERROR(Write(q + "down_proj.weight", {H, Ie}, m.down, e * H * Ie));
    }
    bytes_ += static_cast<int64_t>(m.gate_up.nbytes() + m.down.nbytes());
    return Status::Ok();
  }

 private:
  const ModelConfig& cfg_;
  const Checkpoint& ckpt_;
  Backend* be_;
  const LoadOptions& opt_;
  std::string prefix_;
  int64_t bytes_ = 0;
  int fp8_tensors_ = 0;
};

// One decoder layer under `p` ("layers.3.", or the MTP head's "layers.0."): its mixer (Gated
// DeltaNet or gated attention) and its feed-forward (dense or MoE, fused or per-expert experts).
StatusOr<LayerWeights> LoadLayer(const ModelConfig& c, Loader& ld, const std::string& p, LayerType type) {
  const int64_t H = c.hidden_size;
  const int64_t C = c.conv_dim(), Hv = c.linear_num_value_heads, dv = c.linear_value_head_dim;
  const int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;
  LayerWeights L;
  L.type = type;
  SPECD_ASSIGN_OR_RETURN(L.input_norm, ld.Get(p + "input_layernorm.weight", {H}));
  SPECD_ASSIGN_OR_RETURN(L.post_norm, ld.Get(p + "post_attention_layernorm.weight", {H}));
  if (L.type == LayerType::kLinearAttention) {
    const std::string q = p + "linear_attn.";
    auto& g = L.gdn;
    SPECD_ASSIGN_OR_RETURN(g.in_proj, ld.GetStacked({{q + "in_proj_qkv.weight", {C, H}},
                                                     {q + "in_proj_z.weight", {Hv * dv, H}},
                                                     {q + "in_proj_b.weight", {Hv, H}},
                                                     {q + "in_proj_a.weight", {Hv, H}}},
                                                    {&g.in_qkv, &g.in_z, &g.in_b, &g.in_a}));
    SPECD_ASSIGN_OR_RETURN(g.conv, ld.Get(q + "conv1d.weight", {C, 1, c.linear_conv_kernel_dim}));
    g.conv = g.conv.Reshape({C, c.linear_conv_kernel_dim});
    SPECD_ASSIGN_OR_RETURN(g.dt_bias, ld.GetF32(q + "dt_bias", {Hv}));
    SPECD_ASSIGN_OR_RETURN(g.a_log, ld.GetF32(q + "A_log", {Hv}));
    SPECD_ASSIGN_OR_RETURN(g.norm, ld.Get(q + "norm.weight", {dv}));
    SPECD_ASSIGN_OR_RETURN(g.out, ld.Get(q + "out_proj.weight", {H, Hv * dv}));
  } else {
    const std::string q = p + "self_attn.";
    auto& a = L.attn;
    SPECD_ASSIGN_OR_RETURN(a.qkv, ld.GetStacked({{q + "q_proj.weight", {2 * Hq * D, H}},
                                                 {q + "k_proj.weight", {Hkv * D, H}},
                                                 {q + "v_proj.weight", {Hkv * D, H}}},
                                                {&a.q, &a.k, &a.v}));
    SPECD_ASSIGN_OR_RETURN(a.o, ld.Get(q + "o_proj.weight", {H, Hq * D}));
    SPECD_ASSIGN_OR_RETURN(a.q_norm, ld.Get(q + "q_norm.weight", {D}));
    SPECD_ASSIGN_OR_RETURN(a.k_norm, ld.Get(q + "k_norm.weight", {D}));
  }
  const std::string m = p + "mlp.";
  if (c.is_moe) {
    auto& e = L.moe;
    e.top_k = c.num_experts_per_tok;
    SPECD_ASSIGN_OR_RETURN(e.router, ld.Get(m + "gate.weight", {c.num_experts, H}));
    SPECD_RETURN_IF_ERROR(ld.Experts(m, e));
    if (c.shared_expert_intermediate_size > 0) {
      const int64_t Is = c.shared_expert_intermediate_size;
      SPECD_ASSIGN_OR_RETURN(e.shared_gate_up, ld.GetStacked({{m + "shared_expert.gate_proj.weight", {Is, H}},
                                                              {m + "shared_expert.up_proj.weight", {Is, H}}},
                                                             {&e.shared_gate, &e.shared_up}));
      SPECD_ASSIGN_OR_RETURN(e.shared_down, ld.Get(m + "shared_expert.down_proj.weight", {H, Is}));
      SPECD_ASSIGN_OR_RETURN(e.shared_router, ld.Get(m + "shared_expert_gate.weight", {1, H}));
    }
  } else {
    const int64_t I = c.intermediate_size;
    SPECD_ASSIGN_OR_RETURN(L.mlp.gate_up, ld.GetStacked({{m + "gate_proj.weight", {I, H}},
                                                         {m + "up_proj.weight", {I, H}}},
                                                        {&L.mlp.gate, &L.mlp.up}));
    SPECD_ASSIGN_OR_RETURN(L.mlp.down, ld.Get(m + "down_proj.weight", {H, I}));
  }
  return L;
}

}  // namespace

StatusOr<ModelWeights> LoadWeights(const ModelConfig& c, const Checkpoint& ckpt, Backend* be,
                                   const LoadOptions& opt) {
  Loader ld(c, ckpt, be, opt);
  UploadsDone uploads(be);
  ModelWeights w;
  const int64_t H = c.hidden_size, V = c.vocab_size;
  SPECD_ASSIGN_OR_RETURN(w.embed, ld.Get("embed_tokens.weight", {V, H}));
  SPECD_ASSIGN_OR_RETURN(w.final_norm, ld.Get("norm.weight", {H}));
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed;
  } else {
    SPECD_ASSIGN_OR_RETURN(w.lm_head, ld.Get("lm_head.weight", {V, H}, /*backbone=*/false));
  }
  // Progress for models that take a while: a line at each quarter of the layers.
  const auto t0 = std::chrono::steady_clock::now();
  const bool large = WeightBytes(c, be->act_dtype()) > (int64_t{4} << 30);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    SPECD_ASSIGN_OR_RETURN(LayerWeights L, LoadLayer(c, ld, fmt::format("layers.{}.", i), c.layer_types[i]));
    w.layers.push_back(std::move(L));
    if (large && (4 * (i + 1)) / c.num_hidden_layers != (4 * i) / c.num_hidden_layers) {
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      spdlog::info("loading: {} of {} layers, {:.1f} GB in {:.1f} s", i + 1, c.num_hidden_layers,
                   static_cast<double>(ld.bytes()) / 1e9, s);
    }
  }
  SPECD_RETURN_IF_ERROR(uploads.Finish());
  w.bytes = ld.bytes();
  w.fp8_tensors = ld.fp8_tensors();
  return w;
}

bool HasMtpHead(const Checkpoint& ckpt) {
  for (const std::string& name : ckpt.Names()) {
    if (name.starts_with("mtp.")) return true;
  }
  return false;
}

StatusOr<MtpWeights> LoadMtpWeights(const ModelConfig& c, const Checkpoint& ckpt, Backend* be,
                                    const LoadOptions& opt) {
  if (!HasMtpHead(ckpt)) {
    return NotFound("the checkpoint has no MTP head (no mtp.* tensors; config.json says mtp_num_hidden_layers = {})",
                    c.mtp_num_hidden_layers);
  }
  if (c.mtp_num_hidden_layers != 1) {
    return Unimplemented("the checkpoint's MTP head has {} layers (config.json mtp_num_hidden_layers); specd "
                         "implements the one-layer head every Qwen3.5 release ships",
                         c.mtp_num_hidden_layers);
  }
  Loader ld(c, ckpt, be, opt, "mtp.");
  UploadsDone uploads(be);
  const int64_t H = c.hidden_size;
  MtpWeights m;
  // fc acts on [embedding ; hidden]: kept as its two halves, one GEMM each, so that the two
  // inputs need no concatenation.
  SPECD_RETURN_IF_ERROR(ld.GetColumnHalves("fc.weight", H, H, &m.fc_embedding, &m.fc_hidden));
  SPECD_ASSIGN_OR_RETURN(m.pre_fc_norm_embedding, ld.Get("pre_fc_norm_embedding.weight", {H}));
  SPECD_ASSIGN_OR_RETURN(m.pre_fc_norm_hidden, ld.Get("pre_fc_norm_hidden.weight", {H}));
  SPECD_ASSIGN_OR_RETURN(m.layer, LoadLayer(c, ld, "layers.0.", LayerType::kFullAttention));
  SPECD_ASSIGN_OR_RETURN(m.norm, ld.Get("norm.weight", {H}));
  SPECD_RETURN_IF_ERROR(uploads.Finish());
  m.bytes = ld.bytes();
  return m;
}

namespace {

// Elements of one decoder layer held in the activation dtype, and in fp32 (dt_bias, A_log).
std::pair<int64_t, int64_t> LayerElements(const ModelConfig& c, LayerType type) {
  const int64_t H = c.hidden_size, C = c.conv_dim();
  const int64_t Hv = c.linear_num_value_heads, dv = c.linear_value_head_dim;
  const int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;
  int64_t act = 2 * H, f32 = 0;  // the two norms
  if (type == LayerType::kLinearAttention) {
    act += (C + Hv * dv + 2 * Hv) * H + C * c.linear_conv_kernel_dim + dv + H * Hv * dv;
    f32 += 2 * Hv;
  } else {
    act += (2 * Hq * D + 2 * Hkv * D) * H + H * Hq * D + 2 * D;
  }
  if (c.is_moe) {
    const int64_t E = c.num_experts, Ie = c.moe_intermediate_size, Is = c.shared_expert_intermediate_size;
    act += E * H + E * 2 * Ie * H + E * H * Ie;
    if (Is > 0) act += 2 * Is * H + H * Is + H;
  } else {
    act += 3 * c.intermediate_size * H;
  }
  return {act, f32};
}

}  // namespace

int64_t WeightBytes(const ModelConfig& c, DType act) {
  const int64_t a = static_cast<int64_t>(DTypeSize(act));
  int64_t n = c.vocab_size * c.hidden_size * (c.tie_word_embeddings ? 1 : 2) + c.hidden_size;
  int64_t bytes = 0;
  for (LayerType t : c.layer_types) {
    auto [e, f] = LayerElements(c, t);
    n += e;
    bytes += 4 * f;
  }
  return bytes + n * a;
}

int64_t MtpWeightBytes(const ModelConfig& c, DType act) {
  auto [e, f] = LayerElements(c, LayerType::kFullAttention);
  return (e + 2 * c.hidden_size * c.hidden_size + 3 * c.hidden_size) * static_cast<int64_t>(DTypeSize(act)) + 4 * f;
}

namespace {

// Deterministic random tensors in the backend's activation dtype (or `dt`), counted in `bytes`.
struct RandomMaker {
  Backend* be;
  uint64_t counter;
  int64_t bytes = 0;
  Tensor operator()(std::vector<int64_t> shape, float scale, float offset = 0.f, DType dt = DType::kF32) {
    Tensor t = be->Random(dt == DType::kF32 ? be->act_dtype() : dt, std::move(shape), scale, offset, ++counter);
    bytes += static_cast<int64_t>(t.nbytes());
    return t;
  }
};

LayerWeights RandomLayer(const ModelConfig& c, LayerType type, RandomMaker& make) {
  const int64_t H = c.hidden_size, C = c.conv_dim();
  const int64_t Hv = c.linear_num_value_heads, dv = c.linear_value_head_dim;
  const int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;
  const float sh = 1.f / std::sqrt(static_cast<float>(H));
  LayerWeights L;
  L.type = type;
  L.input_norm = make({H}, 0.1f);
  L.post_norm = make({H}, 0.1f);
  if (L.type == LayerType::kLinearAttention) {
    auto& g = L.gdn;
    g.in_proj = make({C + Hv * dv + 2 * Hv, H}, sh);
    g.in_qkv = g.in_proj.Rows(0, C);
    g.in_z = g.in_proj.Rows(C, Hv * dv);
    g.in_b = g.in_proj.Rows(C + Hv * dv, Hv);
    g.in_a = g.in_proj.Rows(C + Hv * dv + Hv, Hv);
    g.conv = make({C, c.linear_conv_kernel_dim}, 0.4f);
    g.dt_bias = make.be->Random(DType::kF32, {Hv}, 0.5f, 0.f, ++make.counter);
    g.a_log = make.be->Random(DType::kF32, {Hv}, 0.5f, 1.f, ++make.counter);
    g.norm = make({dv}, 0.1f, 1.f);
    g.out = make({H, Hv * dv}, 1.f / std::sqrt(static_cast<float>(Hv * dv)));
  } else {
    auto& a = L.attn;
    a.qkv = make({2 * Hq * D + 2 * Hkv * D, H}, sh);
    a.q = a.qkv.Rows(0, 2 * Hq * D);
    a.k = a.qkv.Rows(2 * Hq * D, Hkv * D);
    a.v = a.qkv.Rows(2 * Hq * D + Hkv * D, Hkv * D);
    a.o = make({H, Hq * D}, 1.f / std::sqrt(static_cast<float>(Hq * D)));
    a.q_norm = make({D}, 0.1f);
    a.k_norm = make({D}, 0.1f);
  }
  if (c.is_moe) {
    auto& e = L.moe;
    const int64_t E = c.num_experts, Ie = c.moe_intermediate_size, Is = c.shared_expert_intermediate_size;
    e.top_k = c.num_experts_per_tok;
    e.router = make({E, H}, sh);
    e.gate_up = make({E, 2 * Ie, H}, sh);
    e.down = make({E, H, Ie}, 1.f / std::sqrt(static_cast<float>(Ie)));
    if (Is > 0) {
      e.shared_gate_up = make({2 * Is, H}, sh);
      e.shared_gate = e.shared_gate_up.Rows(0, Is);
      e.shared_up = e.shared_gate_up.Rows(Is, Is);
      e.shared_down = make({H, Is}, 1.f / std::sqrt(static_cast<float>(Is)));
      e.shared_router = make({1, H}, sh);
    }
  } else {
    const int64_t I = c.intermediate_size;
    L.mlp.gate_up = make({2 * I, H}, sh);
    L.mlp.gate = L.mlp.gate_up.Rows(0, I);
    L.mlp.up = L.mlp.gate_up.Rows(I, I);
    L.mlp.down = make({H, I}, 1.f / std::sqrt(static_cast<float>(I)));
  }
  return L;
}

}  // namespace

ModelWeights RandomWeights(const ModelConfig& c, Backend* be, uint64_t seed) {
  RandomMaker make{be, seed * 1000003ull};
  const int64_t H = c.hidden_size, V = c.vocab_size;
  const float sh = 1.f / std::sqrt(static_cast<float>(H));
  ModelWeights w;
  w.embed = make({V, H}, 1.f);
  w.final_norm = make({H}, 0.1f);
  w.lm_head = c.tie_word_embeddings ? w.embed : make({V, H}, sh);
  for (int i = 0; i < c.num_hidden_layers; ++i) w.layers.push_back(RandomLayer(c, c.layer_types[i], make));
  w.bytes = make.bytes;
  return w;
}

MtpWeights RandomMtpWeights(const ModelConfig& c, Backend* be, uint64_t seed) {
  RandomMaker make{be, seed * 1000003ull + 500009ull};
  const int64_t H = c.hidden_size;
  const float s2 = 1.f / std::sqrt(static_cast<float>(2 * H));
  MtpWeights m;
  m.pre_fc_norm_embedding = make({H}, 0.1f);
  m.pre_fc_norm_hidden = make({H}, 0.1f);
  m.fc_embedding = make({H, H}, s2);
  m.fc_hidden = make({H, H}, s2);
  m.layer = RandomLayer(c, LayerType::kFullAttention, make);
  m.norm = make({H}, 0.1f);
  m.bytes = make.bytes;
  return m;
}

}  // namespace specd
