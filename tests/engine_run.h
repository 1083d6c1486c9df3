// Runs a SpeculativeEngine over requests to completion, with the backend's token choice or the host path:
// shared by the CPU and GPU token-choice tests, which compare the two.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "qwen35/model.h"
#include "speculative/drafter.h"
#include "speculative/engine.h"

namespace specd::testing {

struct EngineRun {
  std::vector<std::vector<int32_t>> out;
  int64_t host_rows = 0;  // logits rows copied to the host
  int64_t proposed = 0, accepted = 0;  // drafts over all requests
};

// Runs `reqs` to completion with the drafter `d` (null: plain decoding), prompts prefilled in
// chunks of `prefill_chunk`.
inline EngineRun RunEngineWith(Qwen35Model* target, std::unique_ptr<Drafter> d, bool device_token_choice, int k,
                               const std::vector<GenerationRequest>& reqs, std::vector<int32_t> eos = {},
                               int64_t prefill_chunk = 512) {
  EngineOptions o;
  o.prefill_chunk = prefill_chunk;
  o.max_seqs = std::max<int>(8, static_cast<int>(reqs.size()));
  o.max_ctx = 512;
  o.default_k = k;
  o.device_token_choice = device_token_choice;
  o.eos_ids = std::move(eos);
  auto e = std::move(SpeculativeEngine::Create(target, std::move(d), o)).value();
  std::vector<int> ids;
  for (const auto& r : reqs) {
    auto id = e->Add(r);
    EXPECT_TRUE(id.ok()) << id.status().ToString();
    if (!id.ok()) return {};
    ids.push_back(*id);
  }
  while (e->HasWork()) {
    const Status st = e->Step();
    EXPECT_TRUE(st.ok()) << st.ToString();
    if (!st.ok()) break;
  }
  EngineRun run;
  for (int id : ids) {
    run.out.push_back(e->Generated(id));
    run.proposed += e->Stats(id).draft_tokens;
    run.accepted += e->Stats(id).accepted_tokens;
  }
  run.host_rows = e->host_logits_rows();
  return run;
}

// drafter: "none", "ngram", "near" (the draft model `near`) or "mtp" (the target's MTP head).
inline EngineRun RunEngine(Qwen35Model* target, Qwen35Model* near, bool device_token_choice,
                           const std::string& drafter, int k, const std::vector<GenerationRequest>& reqs,
                           std::vector<int32_t> eos = {}, int64_t prefill_chunk = 512) {
  std::unique_ptr<Drafter> d;
  if (drafter == "ngram") d = MakeNgramDrafter();
  const int seqs = std::max<int>(8, static_cast<int>(reqs.size()));
  if (drafter == "near") d = std::move(MakeDraftModelDrafter(near, 512, seqs, 512, 16)).value();
  if (drafter == "mtp") d = std::move(MakeMtpDrafter(target, seqs, 512, 16)).value();
  return RunEngineWith(target, std::move(d), device_token_choice, k, reqs, std::move(eos), prefill_chunk);
}

// n tokens after the prompt, eos ignored.
inline GenerationRequest Req(std::vector<int32_t> prompt, int n) {
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.max_tokens = n;
  r.ignore_eos = true;
  return r;
}

}  // namespace specd::testing
