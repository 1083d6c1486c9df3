// The verify rule: given the target's distributions at positions 0..k of a verify forward and the
// k drafts, decide how many drafts to keep and the one token that follows them (correction or
// bonus). Greedy, Leviathan/Chen rejection sampling and coupled (shared-Gumbel) sampling.
#pragma once

#include <cstdint>
#include <vector>

#include "speculative/sampling.h"

namespace specd {

struct VerifyInput {
  // Target rows [k+1][V] already processed into distributions (ProcessedProbs).
  const std::vector<std::vector<float>>* target_probs = nullptr;
  const std::vector<int32_t>* drafts = nullptr;  // d1..dk
  // The draft distributions q_i each d_i was sampled from; empty = one-hot (n-gram, greedy).
  const std::vector<std::vector<float>>* draft_probs = nullptr;
  const SamplingParams* sampling = nullptr;
  int64_t position = 0;  // absolute position of d1 (row i predicts position + i)
};

struct VerifyResult {
  int accepted = 0;     // drafts kept
  int32_t next = 0;     // the token after them
};

VerifyResult Verify(const VerifyInput& in);

// Verification from per-row choices (Backend::ChooseTokens over the k+1 rows, row i a verify row
// of draft i + 1, row k a plain draw): the first rejected row gives (i, its token), else
// (k, row k's token). The same result as Verify() on those rows' distributions.
VerifyResult VerifyFromChoices(const TokenChoice* rows, int k);

}  // namespace specd
