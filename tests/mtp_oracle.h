// The MTP drafter with its drafts replaced by an AcceptanceDrafter's (speculative/
// controlled_drafter.h): the head runs its full state machine (prefill rows, chained steps,
// rollback), while the verifier accepts drafts often, so the paths where a verify keeps several
// tokens (ObserveTarget over accepted rows) run on models whose head is random. Shared by the CPU
// and GPU MTP tests.
#pragma once

#include <memory>
#include <vector>

#include "qwen35/model.h"
#include "speculative/controlled_drafter.h"

namespace specd::testing {

// `references`: prompt + the target's greedy continuation of each request (a plain run's output).
inline std::unique_ptr<Drafter> MakeOracleMtp(Qwen35Model* target, std::vector<std::vector<int32_t>> references,
                                              double alpha, int max_seqs) {
  AcceptanceDrafterOptions ao;
  ao.alpha = alpha;
  ao.vocab_size = target->config().vocab_size;
  auto oracle = AcceptanceDrafter::Create(std::move(references), ao);
  auto mtp = MakeMtpDrafter(target, max_seqs, 512, 16);
  if (!oracle.ok() || !mtp.ok()) return nullptr;
  return std::make_unique<ControlledDrafter>(std::move(*mtp), std::move(*oracle));
}

}  // namespace specd::testing
