#include "speculative/acceptance_drafter.h"

#include <algorithm>

#include "speculative/rng.h"

namespace specd {

StatusOr<std::unique_ptr<AcceptanceDrafter>> AcceptanceDrafter::Create(std::vector<std::vector<int32_t>> references,
                                                                       const AcceptanceDrafterOptions& opt) {
  if (!(opt.alpha >= 0.0 && opt.alpha <= 1.0)) return InvalidArgument("alpha must be in [0, 1] (got {})", opt.alpha);
  if (opt.vocab_size < 2) return InvalidArgument("vocab size must be at least 2 (got {})", opt.vocab_size);
  if (references.empty()) return InvalidArgument("the acceptance drafter needs at least one reference sequence");
  for (size_t r = 0; r < references.size(); ++r) {
    for (int32_t t : references[r]) {
      if (t < 0 || t >= opt.vocab_size) {
        return InvalidArgument("reference {} holds token {} outside the vocabulary [0, {})", r, t, opt.vocab_size);
      }
    }
  }
  return std::unique_ptr<AcceptanceDrafter>(new AcceptanceDrafter(std::move(references), opt));
}

Status AcceptanceDrafter::AddSequence(int seq_id) {
  if (!seqs_.emplace(seq_id, Seq{}).second) return Internal("acceptance drafter: sequence {} added twice", seq_id);
  return Status::Ok();
}

void AcceptanceDrafter::RemoveSequence(int seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return;
  if (it->second.ref >= 0) --bound_[it->second.ref];
  seqs_.erase(it);
}

int AcceptanceDrafter::Bind(const std::vector<int32_t>& ctx) {
  int best = -1;
  for (size_t r = 0; r < refs_.size(); ++r) {
    const auto& ref = refs_[r];
    if (ref.size() < ctx.size() || !std::equal(ctx.begin(), ctx.end(), ref.begin())) continue;
    if (best < 0 || bound_[r] < bound_[best]) best = static_cast<int>(r);
  }
  if (best >= 0) ++bound_[best];
  return best;
}

Status AcceptanceDrafter::Propose(const std::vector<DraftRequest>& reqs, std::vector<DraftProposal>& out) {
  out.assign(reqs.size(), {});
  for (size_t r = 0; r < reqs.size(); ++r) {
    const DraftRequest& rq = reqs[r];
    if (rq.k <= 0) continue;
    auto it = seqs_.find(rq.seq_id);
    if (it == seqs_.end()) return Internal("acceptance drafter: unknown sequence {}", rq.seq_id);
    Seq& s = it->second;
    if (s.lost) continue;
    const auto& ctx = *rq.context;
    if (s.ref < 0) s.ref = Bind(ctx);
    // The whole context is compared every step (a few hundred tokens): a divergence anywhere,
    // not just in the newest tokens, means the reference is not this target's continuation.
    if (s.ref < 0 || refs_[s.ref].size() < ctx.size() ||
        !std::equal(ctx.begin(), ctx.end(), refs_[s.ref].begin())) {
      s.lost = true;
      ++diverged_;
      continue;
    }
    const auto& ref = refs_[s.ref];
    // Each reference draws from its own stream, so sequences with equal prompts err independently.
    const uint64_t seed = SplitMix64(opt_.seed ^ (static_cast<uint64_t>(s.ref) << 32));
    const int64_t p0 = static_cast<int64_t>(ctx.size());  // position of d1
    for (int i = 1; i <= rq.k; ++i) {
      const int64_t pos = p0 + i - 1;
      if (pos >= static_cast<int64_t>(ref.size())) break;  // past the known continuation
      const int32_t truth = ref[pos];
      const uint64_t upos = static_cast<uint64_t>(pos), ui = static_cast<uint64_t>(i);
      // u < alpha is never true for alpha = 0 and always for alpha = 1 (u is in [0, 1)).
      if (CounterUniform(seed, upos, ui, RngStream::kDraft) < opt_.alpha) {
        out[r].tokens.push_back(truth);
      } else {
        const int64_t off = 1 + static_cast<int64_t>(CounterHash(seed, upos, ui, RngStream::kResidual) %
                                                     static_cast<uint64_t>(opt_.vocab_size - 1));
        out[r].tokens.push_back(static_cast<int32_t>((truth + off) % opt_.vocab_size));
      }
    }
  }
  return Status::Ok();
}

Status AcceptanceDrafter::Accept(const std::vector<DraftOutcome>& outcomes) {
  for (const DraftOutcome& o : outcomes) {
    if (o.proposed <= 0) continue;
    if (o.accepted < 0 || o.accepted > o.proposed) {
      return Internal("acceptance drafter: {} of {} drafts accepted", o.accepted, o.proposed);
    }
    kept_ += o.accepted;
    looked_at_ += o.accepted + (o.accepted < o.proposed ? 1 : 0);
  }
  return Status::Ok();
}

}  // namespace specd
