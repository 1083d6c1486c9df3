#include "checkpoint/config.h"

#include <filesystem>
#include <fstream>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

namespace specd {
namespace {

using nlohmann::json;

// Reads key `k` of object `o` into `out` when present and not null; a value of the wrong type is
// an error rather than a silent default.
template <typename T>
Status Get(const json& o, const char* k, T& out) {
  auto it = o.find(k);
  if (it == o.end() || it->is_null()) return Status::Ok();
  try {
    out = it->get<T>();
  } catch (const json::exception& e) {
    return InvalidArgument("config key '{}' has the wrong type ({})", k, e.what());
  }
  return Status::Ok();
}

bool IsTextType(const std::string& t) { return t == "qwen3_5_text" || t == "qwen3_5_moe_text"; }
bool IsOuterType(const std::string& t) { return t == "qwen3_5" || t == "qwen3_5_moe"; }

Status ReadEos(const json& o, std::vector<int>& out) {
  auto it = o.find("eos_token_id");
  if (it == o.end() || it->is_null()) return Status::Ok();
  if (it->is_number_integer()) {
    out = {it->get<int>()};
  } else if (it->is_array()) {
    out.clear();
    for (const auto& v : *it) {
      if (!v.is_number_integer()) return InvalidArgument("config key 'eos_token_id' must hold integers");
      out.push_back(v.get<int>());
    }
  } else {
    return InvalidArgument("config key 'eos_token_id' must be an integer or a list of integers");
  }
  return Status::Ok();
}

Status ParseText(const json& t, ModelConfig& c) {
  SPECD_RETURN_IF_ERROR(Get(t, "vocab_size", c.vocab_size));
  SPECD_RETURN_IF_ERROR(Get(t, "hidden_size", c.hidden_size));
  SPECD_RETURN_IF_ERROR(Get(t, "intermediate_size", c.intermediate_size));
  SPECD_RETURN_IF_ERROR(Get(t, "num_hidden_layers", c.num_hidden_layers));
  SPECD_RETURN_IF_ERROR(Get(t, "full_attention_interval", c.full_attention_interval));
  SPECD_RETURN_IF_ERROR(Get(t, "num_attention_heads", c.num_attention_heads));
  SPECD_RETURN_IF_ERROR(Get(t, "num_key_value_heads", c.num_key_value_heads));
  SPECD_RETURN_IF_ERROR(Get(t, "head_dim", c.head_dim));
  SPECD_RETURN_IF_ERROR(Get(t, "linear_num_key_heads", c.linear_num_key_heads));
  SPECD_RETURN_IF_ERROR(Get(t, "linear_num_value_heads", c.linear_num_value_heads));
  SPECD_RETURN_IF_ERROR(Get(t, "linear_key_head_dim", c.linear_key_head_dim));
  SPECD_RETURN_IF_ERROR(Get(t, "linear_value_head_dim", c.linear_value_head_dim));
  SPECD_RETURN_IF_ERROR(Get(t, "linear_conv_kernel_dim", c.linear_conv_kernel_dim));
  SPECD_RETURN_IF_ERROR(Get(t, "hidden_act", c.hidden_act));
  SPECD_RETURN_IF_ERROR(Get(t, "rms_norm_eps", c.rms_norm_eps));
  SPECD_RETURN_IF_ERROR(Get(t, "attention_bias", c.attention_bias));
  SPECD_RETURN_IF_ERROR(Get(t, "tie_word_embeddings", c.tie_word_embeddings));
  SPECD_RETURN_IF_ERROR(Get(t, "max_position_embeddings", c.max_position_embeddings));
  SPECD_RETURN_IF_ERROR(Get(t, "num_experts", c.num_experts));
  SPECD_RETURN_IF_ERROR(Get(t, "num_experts_per_tok", c.num_experts_per_tok));
  SPECD_RETURN_IF_ERROR(Get(t, "moe_intermediate_size", c.moe_intermediate_size));
  SPECD_RETURN_IF_ERROR(Get(t, "shared_expert_intermediate_size", c.shared_expert_intermediate_size));
  SPECD_RETURN_IF_ERROR(Get(t, "bos_token_id", c.bos_token_id));
  SPECD_RETURN_IF_ERROR(Get(t, "pad_token_id", c.pad_token_id));
  SPECD_RETURN_IF_ERROR(Get(t, "mtp_num_hidden_layers", c.mtp_num_hidden_layers));
  SPECD_RETURN_IF_ERROR(ReadEos(t, c.eos_token_ids));

  // Older layouts keep rope keys at the top level; rope_parameters wins where both exist.
  SPECD_RETURN_IF_ERROR(Get(t, "rope_theta", c.rope_theta));
  SPECD_RETURN_IF_ERROR(Get(t, "partial_rotary_factor", c.partial_rotary_factor));
  auto rp = t.find("rope_parameters");
  if (rp == t.end() || rp->is_null()) rp = t.find("rope_scaling");
  if (rp != t.end() && !rp->is_null()) {
    if (!rp->is_object()) return InvalidArgument("config key 'rope_parameters' must be an object");
    SPECD_RETURN_IF_ERROR(Get(*rp, "rope_type", c.rope_type));
    SPECD_RETURN_IF_ERROR(Get(*rp, "rope_theta", c.rope_theta));
    SPECD_RETURN_IF_ERROR(Get(*rp, "partial_rotary_factor", c.partial_rotary_factor));
    SPECD_RETURN_IF_ERROR(Get(*rp, "mrope_section", c.mrope_section));
    SPECD_RETURN_IF_ERROR(Get(*rp, "mrope_interleaved", c.mrope_interleaved));
  }

  auto lt = t.find("layer_types");
  if (lt != t.end() && !lt->is_null()) {
    if (!lt->is_array()) return InvalidArgument("config key 'layer_types' must be a list");
    for (const auto& v : *lt) {
      if (!v.is_string()) return InvalidArgument("config key 'layer_types' must hold strings");
      const auto s = v.get<std::string>();
      if (s == "linear_attention") {
        c.layer_types.push_back(LayerType::kLinearAttention);
      } else if (s == "full_attention") {
        c.layer_types.push_back(LayerType::kFullAttention);
      } else {
        return InvalidArgument("unsupported layer type '{}' in layer_types", s);
      }
    }
  }
  return Status::Ok();
}

// quantization_config: only block-wise FP8 (e4m3, dynamic activations, 16..128 power-of-two
// blocks); anything else stops here with what was found, rather than loading weights wrongly.
Status ParseQuantization(const json& q, ModelConfig& c) {
  if (!q.is_object()) return InvalidArgument("config key 'quantization_config' must be an object");
  std::string method, fmt_name = "e4m3", activations = "dynamic", scale_fmt = "float";
  SPECD_RETURN_IF_ERROR(Get(q, "quant_method", method));
  if (method != "fp8") {
    return Unimplemented(
        "quantization_config.quant_method '{}' is not supported (specd reads block-wise FP8 checkpoints, "
        "quant_method \"fp8\", and bf16/fp16/fp32 ones)",
        method.empty() ? std::string("<missing>") : method);
  }
  SPECD_RETURN_IF_ERROR(Get(q, "fmt", fmt_name));
  SPECD_RETURN_IF_ERROR(Get(q, "activation_scheme", activations));
  SPECD_RETURN_IF_ERROR(Get(q, "scale_fmt", scale_fmt));
  if (fmt_name != "e4m3") return Unimplemented("FP8 format '{}' is not supported (only e4m3)", fmt_name);
  if (activations != "dynamic") {
    return Unimplemented("FP8 activation_scheme '{}' is not supported (only dynamic)", activations);
  }
  if (scale_fmt != "float") {
    return Unimplemented("FP8 scale_fmt '{}' is not supported (only float scales: F32, BF16 or F16)", scale_fmt);
  }
  auto bs = q.find("weight_block_size");
  if (bs == q.end() || bs->is_null()) {
    return Unimplemented("FP8 checkpoints without weight_block_size (per-tensor scales) are not supported");
  }
  std::vector<int64_t> block;
  SPECD_RETURN_IF_ERROR(Get(q, "weight_block_size", block));
  auto supported = [](int64_t v) { return v >= 16 && v <= 128 && (v & (v - 1)) == 0; };
  if (block.size() != 2 || !supported(block[0]) || !supported(block[1])) {
    return Unimplemented("FP8 weight_block_size [{}] is not supported (two powers of two in 16..128; Qwen's "
                         "checkpoints use [128, 128])",
                         fmt::join(block, ", "));
  }
  c.fp8 = Fp8Blocks{block[0], block[1]};
  return Status::Ok();
}

Status Validate(ModelConfig& c) {
  if (c.num_hidden_layers <= 0) return InvalidArgument("num_hidden_layers must be positive");
  if (c.layer_types.empty()) {
    if (c.full_attention_interval <= 0) return InvalidArgument("full_attention_interval must be positive");
    for (int i = 0; i < c.num_hidden_layers; ++i) {
      c.layer_types.push_back((i + 1) % c.full_attention_interval == 0 ? LayerType::kFullAttention
                                                                       : LayerType::kLinearAttention);
    }
  }
  if (static_cast<int>(c.layer_types.size()) != c.num_hidden_layers) {
    return InvalidArgument("layer_types has {} entries but num_hidden_layers is {}",
                           c.layer_types.size(), c.num_hidden_layers);
  }
  auto pos = [](int64_t v, const char* name) -> Status {
    return v > 0 ? Status::Ok() : InvalidArgument("config key '{}' must be positive (got {})", name, v);
  };
  SPECD_RETURN_IF_ERROR(pos(c.vocab_size, "vocab_size"));
  SPECD_RETURN_IF_ERROR(pos(c.hidden_size, "hidden_size"));
  SPECD_RETURN_IF_ERROR(pos(c.num_attention_heads, "num_attention_heads"));
  SPECD_RETURN_IF_ERROR(pos(c.num_key_value_heads, "num_key_value_heads"));
  SPECD_RETURN_IF_ERROR(pos(c.head_dim, "head_dim"));
  SPECD_RETURN_IF_ERROR(pos(c.linear_num_key_heads, "linear_num_key_heads"));
  SPECD_RETURN_IF_ERROR(pos(c.linear_num_value_heads, "linear_num_value_heads"));
  SPECD_RETURN_IF_ERROR(pos(c.linear_key_head_dim, "linear_key_head_dim"));
  SPECD_RETURN_IF_ERROR(pos(c.linear_value_head_dim, "linear_value_head_dim"));
  SPECD_RETURN_IF_ERROR(pos(c.linear_conv_kernel_dim, "linear_conv_kernel_dim"));
  if (c.hidden_act != "silu") return InvalidArgument("unsupported hidden_act '{}' (only silu)", c.hidden_act);
  if (c.attention_bias) return InvalidArgument("unsupported attention_bias=true (Qwen3.5 has no biases)");
  if (c.rope_type != "default") return InvalidArgument("unsupported rope_type '{}' (only default)", c.rope_type);
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return InvalidArgument("num_attention_heads {} is not a multiple of num_key_value_heads {}",
                           c.num_attention_heads, c.num_key_value_heads);
  }
  if (c.linear_num_value_heads % c.linear_num_key_heads != 0) {
    return InvalidArgument("linear_num_value_heads {} is not a multiple of linear_num_key_heads {}",
                           c.linear_num_value_heads, c.linear_num_key_heads);
  }
  if (!(c.partial_rotary_factor > 0.0 && c.partial_rotary_factor <= 1.0)) {
    return InvalidArgument("partial_rotary_factor must be in (0, 1] (got {})", c.partial_rotary_factor);
  }
  if (c.rotary_dim() % 2 != 0 || c.rotary_dim() == 0) {
    return InvalidArgument("rotary dimension head_dim*partial_rotary_factor = {} must be even and non-zero",
                           c.rotary_dim());
  }
  if (!(c.rope_theta > 0.0)) return InvalidArgument("rope_theta must be positive");
  if (!(c.rms_norm_eps > 0.0)) return InvalidArgument("rms_norm_eps must be positive");
  // Text-only positions make interleaved mRoPE identical to 1-D RoPE, whatever the sections are
  // (docs/DESIGN-NOTES.md, the forward), so mrope_section needs no further check here.
  if (c.is_moe) {
    SPECD_RETURN_IF_ERROR(pos(c.num_experts, "num_experts"));
    SPECD_RETURN_IF_ERROR(pos(c.num_experts_per_tok, "num_experts_per_tok"));
    SPECD_RETURN_IF_ERROR(pos(c.moe_intermediate_size, "moe_intermediate_size"));
    if (c.num_experts_per_tok > c.num_experts) {
      return InvalidArgument("num_experts_per_tok {} exceeds num_experts {}", c.num_experts_per_tok,
                             c.num_experts);
    }
  } else {
    SPECD_RETURN_IF_ERROR(pos(c.intermediate_size, "intermediate_size"));
  }
  return Status::Ok();
}

}  // namespace

int ModelConfig::num_gdn_layers() const {
  int n = 0;
  for (auto t : layer_types) n += t == LayerType::kLinearAttention;
  return n;
}
int ModelConfig::num_attn_layers() const { return num_hidden_layers - num_gdn_layers(); }

StatusOr<ModelConfig> ParseModelConfig(const json& doc) {
  if (!doc.is_object()) return InvalidArgument("config.json must be a JSON object");
  ModelConfig c;
  std::string type;
  SPECD_RETURN_IF_ERROR(Get(doc, "model_type", type));
  const json* text = &doc;
  if (IsOuterType(type)) {
    auto it = doc.find("text_config");
    if (it == doc.end() || !it->is_object()) {
      return InvalidArgument("config of model_type '{}' has no text_config object", type);
    }
    text = &*it;
    std::string inner = type + "_text";
    SPECD_RETURN_IF_ERROR(Get(*text, "model_type", inner));
    c.outer_model_type = type;
    type = inner;
  } else {
    c.outer_model_type = type;
  }
  if (!IsTextType(type)) {
    return InvalidArgument(
        "unsupported model_type '{}' (supported: qwen3_5, qwen3_5_moe, qwen3_5_text, qwen3_5_moe_text)",
        type.empty() ? std::string("<missing>") : type);
  }
  c.model_type = type;
  c.is_moe = type == "qwen3_5_moe_text";
  SPECD_RETURN_IF_ERROR(ParseText(*text, c));
  if (text != &doc) {
    // Small multimodal checkpoints may carry tie_word_embeddings and eos only at the top level;
    // the top-level value is the one transformers reads for the composite model.
    SPECD_RETURN_IF_ERROR(Get(doc, "tie_word_embeddings", c.tie_word_embeddings));
    if (c.eos_token_ids.empty()) SPECD_RETURN_IF_ERROR(ReadEos(doc, c.eos_token_ids));
  }
  // Qwen's multimodal checkpoints keep quantization_config at the top level.
  for (const json* o : {&doc, text}) {
    auto q = o->find("quantization_config");
    if (q == o->end() || q->is_null()) continue;
    if (c.fp8) {  // both places have one: they must agree
      ModelConfig other;
      SPECD_RETURN_IF_ERROR(ParseQuantization(*q, other));
      if (other.fp8 != c.fp8) {
        return InvalidArgument("quantization_config at the top level and in text_config disagree");
      }
      continue;
    }
    SPECD_RETURN_IF_ERROR(ParseQuantization(*q, c));
  }
  SPECD_RETURN_IF_ERROR(Validate(c));
  return c;
}

StatusOr<ModelConfig> LoadModelConfig(const std::string& dir_or_file) {
  namespace fs = std::filesystem;
  fs::path p(dir_or_file);
  std::error_code ec;
  if (fs::is_directory(p, ec)) p /= "config.json";
  std::ifstream in(p);
  if (!in) return NotFound("cannot open model config {}", p.string());
  json doc = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return InvalidArgument("{}: not valid JSON", p.string());
  auto c = ParseModelConfig(doc);
  if (!c.ok()) return Status(c.status().code(), fmt::format("{}: {}", p.string(), c.status().message()));
  return c;
}

}  // namespace specd
