// The token draw every model-based drafter (draft model, MTP head) makes at one draft position,
// written once so both draw exactly alike.
#pragma once

#include <vector>

#include "runtime/backend.h"
#include "speculative/drafter.h"

namespace specd {

// Draft position j (1-based) for a batch: logits row `row[b]` belongs to request `reqs[b]`. The
// tokens are drawn on the backend with the drafters' own noise stream (a coupled row draws the
// target's noise at the same position, so equal tokens mean acceptance) and appended to `out[b]`;
// a rejection-mode row also appends q (its processed row), which the verify needs. Returns the
// tokens, one per batch entry.
StatusOr<std::vector<int32_t>> AppendDraftTokens(Backend& be, Tensor& logits, const std::vector<int64_t>& row,
                                                 const std::vector<const DraftRequest*>& reqs, int j,
                                                 const std::vector<DraftProposal*>& out);

}  // namespace specd
