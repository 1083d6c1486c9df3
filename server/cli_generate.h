#pragma once

#include <string>

#include "server/cli_common.h"

namespace specd::cli {

struct GenerateArgs {
  std::string model, draft, drafter, mtp_vocab, prompt, prompt_ids, device = "cpu", sampling_mode = "rejection";
  std::string stop_ids;
  int k = 4, max_tokens = 32, min_tokens = 0, top_k = 0;
  float temperature = 0.f, top_p = 1.f, min_p = 0.f;
  uint64_t seed = 0;
  bool ignore_eos = false, json = false, adaptive_k = false;
};
Status RunGenerate(const GenerateArgs& a);

}  // namespace specd::cli
