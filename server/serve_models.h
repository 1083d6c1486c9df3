// `specd serve`'s models: which folders (or the embedded demo pair, or random weights of a
// released shape), the backend, the target and draft models, the tokenizer, the engine options,
// and the factory that builds a fresh drafter + engine (at startup and after a failed step).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "qwen35/model.h"
#include "runtime/backend.h"
#include "server/batcher.h"
#include "server/cli_text.h"
#include "server/serve_options.h"
#include "speculative/engine.h"
#include "speculative/memory_plan.h"

namespace specd::serve {

struct ServingModels {
  std::string model_dir, draft_dir;
  std::vector<std::string> drafters;  // served, the default first; empty: plain decoding only
  bool serves(std::string_view drafter) const;
  // "mtp,draft", or "none".
  std::string drafter_list() const;
  bool embedded = false;  // no --model: the demo pair linked into the binary
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Qwen35Model> target, draft;  // draft: only when drafter "draft" is served
  std::unique_ptr<cli::TextCodec> text;
  int64_t max_context = 0;
  std::string weight_format;  // how the target's weights are held (ModelInfo.weight_format)
  MemoryPlan memory;          // the startup plan (ModelInfo, /metrics, the log)
  EngineOptions engine;
  // Builds the drafters + engine over target/draft (which must outlive it).
  EngineFactory MakeEngineFactory() const;
};

// Checks the options that concern the models and loads them.
StatusOr<ServingModels> LoadServingModels(const ServeOptions& o);

}  // namespace specd::serve
