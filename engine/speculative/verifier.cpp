#include "speculative/verifier.h"

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
    // Rejection rule (speculative/sampling.h): keep d_i or replace it with a residual draw.
    const float* q = one_hot ? nullptr : (*in.draft_probs)[i].data();
    if (AcceptDraft(p, q, di, sp.seed, pos, i + 1)) continue;
    r.accepted = i;
    r.next = ResidualDraw(p, q, di, sp.seed, pos, i + 1);
    return r;
  }
  r.accepted = k;
  r.next = SampleToken(P[k], sp, in.position + k);
  return r;
}

VerifyResult VerifyFromChoices(const TokenChoice* rows, int k) {
  VerifyResult r;
  for (int i = 0; i < k; ++i) {
    if (!rows[i].accept) {
      r.accepted = i;
      r.next = rows[i].token;
      return r;
    }
  }
  r.accepted = k;
  r.next = rows[k].token;
  return r;
}

}  // namespace specd
