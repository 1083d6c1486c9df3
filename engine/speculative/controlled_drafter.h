// A BENCHMARK AND TEST TOOL, not a serving drafter: a real drafter (draft model, MTP head) whose
// drafts are replaced by an AcceptanceDrafter's (the target's own greedy token with probability
// alpha). The real drafter runs its whole state machine at its real cost (prefill, k draft
// steps, rollback, the MTP head's rows from the target), while the verifier keeps drafts at a
// stated rate, so random-weight models measure a drafter's end-to-end cost at a chosen
// acceptance, and tests reach the paths where a verify keeps several tokens.
//
// The verifier sees the oracle's tokens, not the real drafter's; the real drafter's own state
// (a draft model's cache) then follows its own drafts, not the kept ones. That changes only what
// it would have drafted next, which the oracle overrides anyway; the target's output is exact
// whatever the drafts are. The MTP head rebuilds its cache from the target's rows, so its state
// stays the real one.
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "speculative/acceptance_drafter.h"
#include "speculative/drafter.h"

namespace specd {

class ControlledDrafter final : public Drafter {
 public:
  ControlledDrafter(std::unique_ptr<Drafter> real, std::unique_ptr<AcceptanceDrafter> oracle)
      : real_(std::move(real)), oracle_(std::move(oracle)) {}
  std::string name() const override { return real_->name() + "-controlled"; }
  Status AddSequence(int id) override {
    SPECD_RETURN_IF_ERROR(oracle_->AddSequence(id));
    return real_->AddSequence(id);
  }
  void RemoveSequence(int id) override {
    real_->RemoveSequence(id);
    oracle_->RemoveSequence(id);
  }
  Status Propose(const std::vector<DraftRequest>& reqs, std::vector<DraftProposal>& out) override {
    std::vector<DraftProposal> theirs(reqs.size());
    SPECD_RETURN_IF_ERROR(real_->Propose(reqs, out));
    SPECD_RETURN_IF_ERROR(oracle_->Propose(reqs, theirs));
    for (size_t r = 0; r < out.size(); ++r) {
      // The real drafter drafted k; the verifier sees the oracle's tokens in their place (a
      // diverged oracle proposes none, and so does the step). One-hot proposals: greedy and
      // coupled verification read no q.
      out[r].tokens.resize(std::min(out[r].tokens.size(), theirs[r].tokens.size()));
      std::copy_n(theirs[r].tokens.begin(), out[r].tokens.size(), out[r].tokens.begin());
      out[r].probs.clear();
    }
    return Status::Ok();
  }
  Status Accept(const std::vector<DraftOutcome>& o) override {
    SPECD_RETURN_IF_ERROR(oracle_->Accept(o));
    return real_->Accept(o);
  }
  bool reads_target_hidden() const override { return real_->reads_target_hidden(); }
  Status ObserveTarget(const Tensor& hidden, const std::vector<TargetRows>& rows) override {
    return real_->ObserveTarget(hidden, rows);
  }
  ModelCache* state_cache() override { return real_->state_cache(); }
  int slot_of(int id) const override { return real_->slot_of(id); }
  const AcceptanceDrafter& oracle() const { return *oracle_; }

 private:
  std::unique_ptr<Drafter> real_;
  std::unique_ptr<AcceptanceDrafter> oracle_;
};

}  // namespace specd
