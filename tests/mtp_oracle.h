// The MTP drafter with its drafts replaced by an AcceptanceDrafter's (the target's own greedy
// tokens with probability alpha): the head runs its full state machine (prefill rows, chained
// steps, rollback), while the verifier accepts drafts often, so the paths where a verify keeps
// several tokens (ObserveTarget over accepted rows) run on models whose head is random. Shared by
// the CPU and GPU MTP tests.
#pragma once

#include <algorithm>
#include <memory>
#include <vector>

#include "qwen35/model.h"
#include "speculative/acceptance_drafter.h"
#include "speculative/drafter.h"

namespace specd::testing {

class OracleMtpDrafter final : public Drafter {
 public:
  OracleMtpDrafter(std::unique_ptr<Drafter> mtp, std::unique_ptr<Drafter> oracle)
      : mtp_(std::move(mtp)), oracle_(std::move(oracle)) {}
  std::string name() const override { return "mtp-oracle"; }
  Status AddSequence(int id) override {
    SPECD_RETURN_IF_ERROR(oracle_->AddSequence(id));
    return mtp_->AddSequence(id);
  }
  void RemoveSequence(int id) override {
    mtp_->RemoveSequence(id);
    oracle_->RemoveSequence(id);
  }
  Status Propose(const std::vector<DraftRequest>& reqs, std::vector<DraftProposal>& out) override {
    std::vector<DraftProposal> theirs;
    SPECD_RETURN_IF_ERROR(mtp_->Propose(reqs, out));
    SPECD_RETURN_IF_ERROR(oracle_->Propose(reqs, theirs));
    for (size_t r = 0; r < out.size(); ++r) {
      // The head drafted k; the verifier sees the oracle's tokens in their place (a diverged
      // oracle proposes none, and so does the step).
      out[r].tokens.resize(std::min(out[r].tokens.size(), theirs[r].tokens.size()));
      std::copy_n(theirs[r].tokens.begin(), out[r].tokens.size(), out[r].tokens.begin());
      out[r].probs.clear();
    }
    return Status::Ok();
  }
  Status Accept(const std::vector<DraftOutcome>& o) override {
    SPECD_RETURN_IF_ERROR(oracle_->Accept(o));
    return mtp_->Accept(o);
  }
  bool reads_target_hidden() const override { return true; }
  Status ObserveTarget(const Tensor& hidden, const std::vector<TargetRows>& rows) override {
    return mtp_->ObserveTarget(hidden, rows);
  }
  ModelCache* state_cache() override { return mtp_->state_cache(); }
  int slot_of(int id) const override { return mtp_->slot_of(id); }

 private:
  std::unique_ptr<Drafter> mtp_, oracle_;
};

// `references`: prompt + the target's greedy continuation of each request (a plain run's output).
inline std::unique_ptr<Drafter> MakeOracleMtp(Qwen35Model* target, std::vector<std::vector<int32_t>> references,
                                              double alpha, int max_seqs) {
  AcceptanceDrafterOptions ao;
  ao.alpha = alpha;
  ao.vocab_size = target->config().vocab_size;
  auto oracle = AcceptanceDrafter::Create(std::move(references), ao);
  auto mtp = MakeMtpDrafter(target, max_seqs, 512, 16);
  if (!oracle.ok() || !mtp.ok()) return nullptr;
  return std::make_unique<OracleMtpDrafter>(std::move(*mtp), std::move(*oracle));
}

}  // namespace specd::testing
