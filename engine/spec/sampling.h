// Sampling parameters and the processed target distribution (temperature, top-k, top-p, min-p),
// shared by plain decoding, the drafters and the verifier so all three see the same distribution.
#pragma once

#include <cstdint>
#include <vector>

#include "util/status.h"

namespace specd {

enum class SamplingMode { kRejection, kCoupled };

struct SamplingParams {
  float temperature = 0.f;  // 0 = greedy
  int top_k = 0;            // 0 = off
  float top_p = 1.f;        // 1 = off
  float min_p = 0.f;        // 0 = off
  uint64_t seed = 0;
  SamplingMode mode = SamplingMode::kRejection;
  bool greedy() const { return temperature <= 0.f; }
};

Status ValidateSampling(const SamplingParams& p);

// p = softmax(logits / T) masked to top-k ∩ top-p ∩ min-p and renormalised (fp64 accumulation).
// Greedy params give the one-hot of the argmax.
void ProcessedProbs(const float* logits, int64_t V, const SamplingParams& sp, std::vector<float>& out);

int ArgmaxF(const float* x, int64_t n);
// Inverse-CDF draw from p with uniform u; never returns a zero-probability entry.
int SampleFrom(const std::vector<float>& p, double u);
// Coupled mode: argmax_v log p(v) + Gumbel(seed, position, v), i.e. an exact sample from p whose
// noise depends only on (seed, position).
int GumbelArgmax(const std::vector<float>& p, uint64_t seed, int64_t position);

// Draws the token at absolute `position` from processed probs per the request's mode.
int SampleToken(const std::vector<float>& p, const SamplingParams& sp, int64_t position);

}  // namespace specd
