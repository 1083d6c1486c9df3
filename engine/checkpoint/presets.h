// Qwen3.5 text-model shapes of released checkpoints (docs/DESIGN-NOTES.md, the forward), for benchmarks that
// build random-weight models of real size without a checkpoint.
#pragma once

#include <string>

#include "checkpoint/config.h"

namespace specd {

// name: "0.8B" | "2B" | "4B" | "9B" | "27B" | "35B-A3B" (MoE: 256 experts of 512, top 8, a shared
// expert of 512); eos/bos left unset.
StatusOr<ModelConfig> ReleasedShapes(const std::string& name);

}  // namespace specd
