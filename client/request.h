// The generation flags shared by `generate` and `bench`, and the result JSON shape of
// `specd generate --json` (docs/server.md).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "specd/v1/specd.pb.h"

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace specd::client {

// Flags are copied into the request only when given, so the server's defaults apply otherwise.
struct SamplingFlags {
  uint32_t max_tokens = 16, min_tokens = 0, top_k = 0, k = 0;
  float temperature = 0, top_p = 1, min_p = 0;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  std::string stop_ids, sampling_mode, drafter;
  bool ignore_eos = false, adaptive_k = false;
  CLI::Option *o_max_tokens = nullptr, *o_min_tokens = nullptr, *o_top_k = nullptr, *o_k = nullptr,
              *o_temperature = nullptr, *o_top_p = nullptr, *o_min_p = nullptr, *o_seed = nullptr,
              *o_mode = nullptr, *o_drafter = nullptr;
};

// `bench` takes a subset (no stop strings or min-tokens), `generate` all of them.
void AddSamplingFlags(CLI::App* app, SamplingFlags* f, bool full);
// Fills sampling and speculation; nullopt + *error for a malformed flag (e.g. --stop-ids).
bool ApplySamplingFlags(const SamplingFlags& f, v1::GenerateRequest* req, std::string* error);

// Reads a chat file: a JSON list of {"role","content"}, or {"messages": [...],
// "add_generation_prompt": bool, "enable_thinking": bool}.
bool LoadChat(const std::string& path, v1::ChatPrompt* chat, std::string* error);

const char* FinishReasonName(v1::FinishReason r);
// {"ids", "text", "finish_reason", "stats": {...}}: exactly `specd generate --json`.
nlohmann::json ResultJson(const std::vector<int32_t>& ids, const std::string& text, v1::FinishReason reason,
                          const v1::SpeculativeStats& stats);

}  // namespace specd::client
