// The Qwen3.5 text-model weights on a backend, loaded from a checkpoint in either name layout.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "runtime/backend.h"

namespace specd {

class Checkpoint;

struct GdnWeights {
  Tensor in_qkv, in_z, in_b, in_a;  // [C, H], [Hv*dv, H], [Hv, H], [Hv, H]
  Tensor conv;                      // [C, K]
  Tensor dt_bias, a_log;            // [Hv]
  Tensor norm;                      // [dv] (plain weight)
  Tensor out;                       // [H, Hv*dv]
};

struct AttnWeights {
  Tensor q, k, v, o;     // [2*Hq*D, H], [Hkv*D, H], [Hkv*D, H], [H, Hq*D]
  Tensor q_norm, k_norm; // [D] (1 + w)
};

struct DenseMlpWeights {
  Tensor gate, up, down;  // [I, H], [I, H], [H, I]
};

struct LayerWeights {
  LayerType type = LayerType::kLinearAttention;
  Tensor input_norm, post_norm;  // [H] (1 + w)
  GdnWeights gdn;
  AttnWeights attn;
  DenseMlpWeights mlp;
  MoeTensors moe;
};

struct ModelWeights {
  Tensor embed;       // [V, H]
  Tensor final_norm;  // [H]
  Tensor lm_head;     // [V, H] (the embedding when tied)
  std::vector<LayerWeights> layers;
  int64_t bytes = 0;  // on the backend
};

// Loads and shape-checks every backbone tensor; `model.visual.*` and `mtp.*` are not loaded.
StatusOr<ModelWeights> LoadWeights(const ModelConfig& cfg, const Checkpoint& ckpt, Backend* backend);

// Random weights with the given shapes (benchmarks of real Qwen3.5 shapes), deterministic in seed.
ModelWeights RandomWeights(const ModelConfig& cfg, Backend* backend, uint64_t seed);

}  // namespace specd
