// The memory plan (docs/memory.md): every large thing a serving engine puts on the device, from
// the configs and options alone, before any of it is allocated. It is logged at startup, served in
// ModelInfo and /metrics, sizes the target's KV pool from a byte budget (--gpu-memory-fraction),
// and stops a configuration that cannot fit at startup with the numbers, never with an
// out-of-memory error mid-request. Exact parts (weights, caches, the prefix cache) are what the
// engine allocates (tests check them against the allocations); the forward workspaces are
// estimates and say so.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/config.h"
#include "speculative/engine.h"
#include "util/dtype.h"
#include "util/status.h"

namespace specd {

struct MemoryPlanInput {
  ModelConfig target;
  DType act = DType::kBF16;
  int64_t target_weight_bytes = -1;  // -1: WeightBytes(target, act)
  bool mtp = false;                  // the MTP head drafts (its weights and its cache)
  std::optional<ModelConfig> draft;  // a draft model drafts
  int64_t draft_weight_bytes = -1;   // -1: WeightBytes(*draft, act)
  bool graphs = true;                // CUDA graphs: their shared workspace
  // max_seqs, max_ctx, max_k, max_prefill_tokens, kv_cache_tokens (0: every slot at max_ctx) and
  // the prefix cache (entries / tokens, or a byte budget, resolved here as the engine does).
  EngineOptions engine;
};

struct MemoryPart {
  std::string name;
  int64_t bytes = 0;
  bool estimate = false;  // the forward workspaces: estimated, not counted
};

struct MemoryPlan {
  std::vector<MemoryPart> parts;
  int64_t kv_tokens = 0;   // KV rows of the requests' pool (the engine's kv_cache_tokens)
  int64_t budget = -1;     // the budget it was sized for (-1: none)
  int64_t total() const;
  int64_t bytes(const std::string& name) const;  // 0 when absent
  // One line per part, then the total (and the budget), for the startup log.
  std::string Table() const;
};

// The plan with in.engine.kv_cache_tokens as given.
StatusOr<MemoryPlan> PlanMemory(const MemoryPlanInput& in);
// The plan whose requests' KV pool is as large as `budget` allows: every slot at max_ctx if that
// fits, else the most whole blocks that do. kResourceExhausted, with the plan's parts, when not
// even one sequence of max_ctx tokens fits beside the rest; an explicit kv_cache_tokens is kept
// and checked against the budget instead.
StatusOr<MemoryPlan> PlanMemoryWithin(const MemoryPlanInput& in, int64_t budget);

}  // namespace specd
