// A BENCHMARK TOOL, not a serving drafter (the server's drafter names do not include it): it
// knows the target's greedy continuation of each request in advance and proposes, at every draft
// position, the true next token with probability alpha and a different token otherwise. Under
// greedy verification each draft is then accepted independently with probability alpha (given
// that the drafts before it were), so the accepted length per step is a truncated geometric and
// the expected tokens per verify step is (1 - alpha^{k+1}) / (1 - alpha): the knob that lets a
// benchmark measure the engine at a stated acceptance rate on random-weight models, where no
// real drafter would ever be accepted.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "speculative/drafter.h"

namespace specd {

struct AcceptanceDrafterOptions {
  double alpha = 0.8;      // probability that each draft is the target's token
  uint64_t seed = 1;       // with (reference, position, draft index): every draw is reproducible
  int64_t vocab_size = 0;  // wrong drafts are drawn from [0, vocab_size) minus the true token
};

class AcceptanceDrafter final : public Drafter {
 public:
  // `references`: full token sequences (prompt followed by the target's greedy continuation).
  // A sequence is bound, at its first proposal, to a reference of which its context is a prefix
  // (an unbound one first, so equal prompts spread over equal references).
  static StatusOr<std::unique_ptr<AcceptanceDrafter>> Create(std::vector<std::vector<int32_t>> references,
                                                             const AcceptanceDrafterOptions& opt);

  std::string name() const override { return "acceptance-bench"; }
  Status AddSequence(int seq_id) override;
  void RemoveSequence(int seq_id) override;
  Status Propose(const std::vector<DraftRequest>& reqs, std::vector<DraftProposal>& out) override;
  Status Accept(const std::vector<DraftOutcome>& outcomes) override;

  // Sequences whose context left their reference (or never matched one): the reference was not
  // the target's continuation (numerics differ between runs). They get no drafts from then on,
  // so a benchmark must report this count next to its acceptance figure.
  int diverged() const { return diverged_; }
  // The per-draft acceptance the verifier showed: drafts kept over drafts it looked at (the kept
  // ones plus the first rejected one of each step). An estimate of alpha from
  // `looked_at()` Bernoulli trials.
  double measured_alpha() const { return looked_at_ ? static_cast<double>(kept_) / looked_at_ : 0.0; }
  int64_t looked_at() const { return looked_at_; }
  int64_t kept() const { return kept_; }

 private:
  struct Seq {
    int ref = -1;        // bound reference, -1 before the first proposal
    bool lost = false;   // context no longer a prefix of the reference
  };
  AcceptanceDrafter(std::vector<std::vector<int32_t>> refs, const AcceptanceDrafterOptions& opt)
      : refs_(std::move(refs)), opt_(opt), bound_(refs_.size(), 0) {}
  int Bind(const std::vector<int32_t>& ctx);

  std::vector<std::vector<int32_t>> refs_;
  AcceptanceDrafterOptions opt_;
  std::vector<int> bound_;  // per reference: sequences bound to it
  std::map<int, Seq> seqs_;
  int diverged_ = 0;
  int64_t looked_at_ = 0, kept_ = 0;
};

}  // namespace specd
