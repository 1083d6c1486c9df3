// Sampling parameters and the processed target distribution (temperature, top-k, top-p, min-p),
// shared by plain decoding, the drafters and the verifier so all three see the same distribution.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/token_choice.h"
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

// The rejection rule of a verify row whose draft d was drawn from q (nullptr = one-hot at d):
// keep d iff u(kAccept, index) < min(1, p(d) / q(d)).
bool AcceptDraft(const std::vector<float>& p, const float* q, int32_t d, uint64_t seed, int64_t position,
                 int index);
// The token that replaces a rejected d: a draw from max(0, p - q) renormalised (from p when that
// is empty, i.e. p == q), with u(kResidual, index).
int ResidualDraw(const std::vector<float>& p, const float* q, int32_t d, uint64_t seed, int64_t position,
                 int index);

SamplingParams ParamsOf(const TokenRowSpec& s);
// A plain-draw row (kSample stream, index 0) for the token at `position` under sp.
TokenRowSpec RowSpecOf(const SamplingParams& sp, int64_t position);
// The reference for Backend::ChooseTokens: one row of logits [V] (replaced by its processed
// distribution unless the row is greedy) and q, the draft's distribution or nullptr.
TokenChoice ChooseRow(float* logits, int64_t V, const TokenRowSpec& s, const float* q);

}  // namespace specd
