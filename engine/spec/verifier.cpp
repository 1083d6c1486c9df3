#include "spec/verifier.h"

#include <algorithm>

#include "spec/rng.h"

namespace specd {

VerifyResult Verify(const VerifyInput& in) {
  const auto& P = *in.target_probs;
  const auto& d = *in.drafts;
  const SamplingParams& sp = *in.sampling;
  const int k = static_cast<int>(d.size());
  const bool one_hot = in.draft_probs == nullptr || in.draft_probs->empty();
  VerifyResult r;
  for (int i = 0; i < k; ++i) {
    const auto& p = P[i];
    const int64_t pos = in.position + i;
    const int32_t di = d[i];
    if (sp.greedy() || sp.mode == SamplingMode::kCoupled) {
      // Both modes fix the target's token at each position independently of the draft, so a
      // draft is kept iff it equals that token; the output equals plain decoding exactly.
      const int32_t y = SampleToken(p, sp, pos);
      if (di != y) {
        r.accepted = i;
        r.next = y;
        return r;
      }
      continue;
    }
    // Rejection rule: keep d_i with probability min(1, p(d_i) / q(d_i)).
    const double pd = p[di];
    const double qd = one_hot ? 1.0 : (*in.draft_probs)[i][di];
    const double u = CounterUniform(sp.seed, static_cast<uint64_t>(pos), static_cast<uint64_t>(i + 1),
                                    RngStream::kAccept);
    if (qd > 0 && u < std::min(1.0, pd / qd)) continue;
    // Rejected: resample from the residual max(0, p - q), renormalised.
    std::vector<float> res(p.size());
    double mass = 0;
    for (size_t v = 0; v < p.size(); ++v) {
      const double q = one_hot ? (static_cast<int32_t>(v) == di ? 1.0 : 0.0) : (*in.draft_probs)[i][v];
      res[v] = static_cast<float>(std::max(0.0, static_cast<double>(p[v]) - q));
      mass += res[v];
    }
    if (mass <= 0) res = p;  // p == q: any draw from p is exact
    r.accepted = i;
    r.next = SampleFrom(res, CounterUniform(sp.seed, static_cast<uint64_t>(pos),
                                            static_cast<uint64_t>(i + 1), RngStream::kResidual));
    return r;
  }
  r.accepted = k;
  r.next = SampleToken(P[k], sp, in.position + k);
  return r;
}

VerifyResult VerifyGreedyIds(const int32_t* y, const std::vector<int32_t>& drafts) {
  VerifyResult r;
  const int k = static_cast<int>(drafts.size());
  for (int i = 0; i < k; ++i) {
    if (drafts[i] != y[i]) {
      r.accepted = i;
      r.next = y[i];
      return r;
    }
  }
  r.accepted = k;
  r.next = y[k];
  return r;
}

}  // namespace specd
