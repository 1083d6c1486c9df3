// ModelConfig: the Qwen3.5 text-model hyper-parameters, parsed from a HF config.json in either
// the text-only layout (qwen3_5_text / qwen3_5_moe_text) or the nested multimodal layout
// (qwen3_5 / qwen3_5_moe with text_config). See docs/DESIGN-NOTES.md, the forward.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "util/status.h"

namespace specd {

enum class LayerType { kLinearAttention, kFullAttention };

// Block-wise FP8 weights (config.json quantization_config, quant_method "fp8", the format Qwen
// publishes its FP8 checkpoints in): an F8_E4M3 weight [.., rows, cols] comes with
// NAME_scale_inv [.., ceil(rows / this.rows), ceil(cols / this.cols)], weight = e4m3 * scale_inv.
struct Fp8Blocks {
  int64_t rows = 128;
  int64_t cols = 128;
  bool operator==(const Fp8Blocks&) const = default;
};

struct ModelConfig {
  std::string model_type;       // the text model type: qwen3_5_text or qwen3_5_moe_text
  std::string outer_model_type; // qwen3_5 / qwen3_5_moe for the multimodal layout, else == model_type
  bool is_moe = false;

  int64_t vocab_size = 248320;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 12288;
  int num_hidden_layers = 32;
  std::vector<LayerType> layer_types;
  int full_attention_interval = 4;

  int num_attention_heads = 16;
  int num_key_value_heads = 4;
  int head_dim = 256;

  int linear_num_key_heads = 16;
  int linear_num_value_heads = 32;
  int linear_key_head_dim = 128;
  int linear_value_head_dim = 128;
  int linear_conv_kernel_dim = 4;

  std::string hidden_act = "silu";
  double rms_norm_eps = 1e-6;

  std::string rope_type = "default";
  double rope_theta = 10000.0;
  double partial_rotary_factor = 0.25;
  std::vector<int> mrope_section;
  bool mrope_interleaved = false;

  bool attention_bias = false;
  bool tie_word_embeddings = false;
  int64_t max_position_embeddings = 32768;

  // MoE (qwen3_5_moe_text)
  int num_experts = 0;
  int num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  int64_t shared_expert_intermediate_size = 0;

  int bos_token_id = -1;
  int pad_token_id = -1;
  std::vector<int> eos_token_ids;
  int mtp_num_hidden_layers = 0;
  // Set when the checkpoint stores FP8 weights (checkpoint/fp8_weights.h reads them).
  std::optional<Fp8Blocks> fp8;

  // Derived sizes.
  int rotary_dim() const { return static_cast<int>(head_dim * partial_rotary_factor); }
  int64_t conv_dim() const {
    return 2LL * linear_num_key_heads * linear_key_head_dim +
           int64_t{linear_num_value_heads} * linear_value_head_dim;
  }
  int num_gdn_layers() const;
  int num_attn_layers() const;
};

// Parses a config.json document. Unsupported model types or values give InvalidArgument.
StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& doc);
// Reads DIR/config.json (or the file itself when given a .json path).
StatusOr<ModelConfig> LoadModelConfig(const std::string& dir_or_file);

}  // namespace specd
