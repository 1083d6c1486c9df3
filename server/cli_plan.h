#pragma once

#include <cstdint>
#include <string>

#include "server/cli_common.h"

namespace specd::cli {

// `specd plan`: the memory plan of a serving configuration on a device of a given size, from
// the configs alone (no weights are read, nothing is allocated): will it fit, and how large a
// batch or context would (docs/memory.md).
struct PlanArgs {
  std::string model, draft;  // folders (config.json) or random:NAME (a released shape)
  bool mtp = false;
  int64_t device_memory = 0;
  double fraction = 0.9;
  int max_batch = 16;
  int64_t max_context = 32768;
  int k = 4;
  int64_t max_prefill_tokens = 2048;
  int64_t prefix_cache_bytes = 0;
  bool json = false;
};
Status RunPlan(const PlanArgs& a);

}  // namespace specd::cli
