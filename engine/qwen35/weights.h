// The Qwen3.5 text-model weights on a backend, loaded from a checkpoint in either name layout.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/config.h"
#include "runtime/backend.h"

namespace specd {

class Checkpoint;

struct GdnWeights {
  Tensor in_proj;                   // [C + Hv*dv + 2*Hv, H]: the four below, back to back
  Tensor in_qkv, in_z, in_b, in_a;  // [C, H], [Hv*dv, H], [Hv, H], [Hv, H] (views of in_proj)
  Tensor conv;                      // [C, K]
  Tensor dt_bias, a_log;            // [Hv]
  Tensor norm;                      // [dv] (plain weight)
  Tensor out;                       // [H, Hv*dv]
};

struct AttnWeights {
  Tensor qkv;            // [2*Hq*D + 2*Hkv*D, H]: q, k, v back to back
  Tensor q, k, v, o;     // [2*Hq*D, H], [Hkv*D, H], [Hkv*D, H] (views of qkv), [H, Hq*D]
  Tensor q_norm, k_norm; // [D] (1 + w)
};

struct DenseMlpWeights {
  Tensor gate_up;         // [2*I, H]: gate rows, then up rows
  Tensor gate, up, down;  // [I, H], [I, H] (views of gate_up), [H, I]
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
  int fp8_tensors = 0;  // read from FP8, or rounded to it by LoadOptions::quantize_fp8
};

struct LoadOptions {
  // --quantize fp8: round the projections of a float checkpoint (those Qwen's FP8 releases
  // quantize, IsFp8Projection) to block-wise FP8 at load, as a quantized checkpoint would hold
  // them. Ignored for tensors the checkpoint already stores in FP8.
  std::optional<Fp8Blocks> quantize_fp8;
};

// Loads and shape-checks every backbone tensor; `model.visual.*` and `mtp.*` are not loaded.
// FP8 weights (config.fp8) are dequantized to the backend's dtype.
StatusOr<ModelWeights> LoadWeights(const ModelConfig& cfg, const Checkpoint& ckpt, Backend* backend,
                                   const LoadOptions& opt = {});

// Qwen3.5's multi-token-prediction head (`mtp.*`, the same names in the text-only and the
// multimodal layout; docs/mtp.md has the manifest). It has no embedding or lm_head of its own:
// it uses the target's.
struct MtpWeights {
  Tensor fc_embedding, fc_hidden;                    // [H, H] each: mtp.fc.weight [H, 2H], column halves
  Tensor pre_fc_norm_embedding, pre_fc_norm_hidden;  // [H] (1 + w)
  LayerWeights layer;                                // one gated full-attention decoder layer, dense or MoE
  Tensor norm;                                       // [H] (1 + w)
  int64_t bytes = 0;                                 // on the backend
};

// True when the checkpoint stores any mtp.* tensor.
bool HasMtpHead(const Checkpoint& ckpt);
// Loads and shape-checks the MTP head: kNotFound when the checkpoint has none, an error naming
// the tensor when one is missing or mis-shaped (MoE experts fused or per expert, as the backbone).
StatusOr<MtpWeights> LoadMtpWeights(const ModelConfig& cfg, const Checkpoint& ckpt, Backend* backend,
                                    const LoadOptions& opt = {});

// The bytes LoadWeights / LoadMtpWeights (and the Random forms) put on a backend whose
// activation dtype is `act`, from the config alone: the memory plan of a model not loaded yet.
int64_t WeightBytes(const ModelConfig& cfg, DType act);
int64_t MtpWeightBytes(const ModelConfig& cfg, DType act);

// Random weights with the given shapes (benchmarks of real Qwen3.5 shapes), deterministic in seed.
ModelWeights RandomWeights(const ModelConfig& cfg, Backend* backend, uint64_t seed);
// A random MTP head of the config's shapes (benchmarks), deterministic in seed.
MtpWeights RandomMtpWeights(const ModelConfig& cfg, Backend* backend, uint64_t seed);

}  // namespace specd
