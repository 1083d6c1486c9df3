#include "checkpoint/presets.h"

namespace specd {

StatusOr<ModelConfig> ReleasedShapes(const std::string& name) {
  struct Row {
    const char* name;
    int64_t H, I;
    int L, hq, hkv, hv;
    bool tied;
    int experts = 0, top_k = 0;  // MoE: experts of width Ie = I and a shared expert of width I
  };
  static constexpr Row kRows[] = {
      {"0.8B", 1024, 3584, 24, 8, 2, 16, true},   {"2B", 2048, 6144, 24, 8, 2, 16, true},
      {"4B", 2560, 9216, 32, 16, 4, 32, true},    {"9B", 4096, 12288, 32, 16, 4, 32, false},
      {"27B", 5120, 17408, 64, 24, 4, 48, false}, {"35B-A3B", 2048, 512, 40, 16, 2, 32, false, 256, 8},
  };
  for (const Row& r : kRows) {
    if (name != r.name) continue;
    ModelConfig c;
    c.model_type = c.outer_model_type = "qwen3_5_text";
    c.vocab_size = 248320;
    c.hidden_size = r.H;
    c.intermediate_size = r.I;
    c.num_hidden_layers = r.L;
    for (int i = 0; i < r.L; ++i) {
      c.layer_types.push_back((i + 1) % 4 == 0 ? LayerType::kFullAttention : LayerType::kLinearAttention);
    }
    c.num_attention_heads = r.hq;
    c.num_key_value_heads = r.hkv;
    c.head_dim = 256;
    c.linear_num_key_heads = 16;
    c.linear_num_value_heads = r.hv;
    c.linear_key_head_dim = c.linear_value_head_dim = 128;
    c.linear_conv_kernel_dim = 4;
    c.rope_theta = 1e7;
    c.partial_rotary_factor = 0.25;
    c.tie_word_embeddings = r.tied;
    if (r.experts > 0) {
      c.is_moe = true;
      c.model_type = c.outer_model_type = "qwen3_5_moe_text";
      c.num_experts = r.experts;
      c.num_experts_per_tok = r.top_k;
      c.moe_intermediate_size = c.shared_expert_intermediate_size = r.I;
    }
    return c;
  }
  return InvalidArgument("unknown Qwen3.5 shape '{}' (0.8B, 2B, 4B, 9B, 27B, 35B-A3B)", name);
}

}  // namespace specd
