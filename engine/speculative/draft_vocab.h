// A reduced draft vocabulary for the MTP head (docs/mtp.md, "Reduced draft vocabulary"): the
// token ids the head may draft, most frequent first in the corpus it was counted on, stored as
// JSON {"ids": [...], ...} beside the model. Verification still uses the full vocabulary, so
// outputs do not change; only drafts outside the set become impossible.
#pragma once

#include <string>
#include <vector>

#include "util/status.h"

namespace specd {

// Reads and checks a vocabulary file: a non-empty list of distinct ids in [0, vocab_size).
// Returns the ids sorted ascending.
StatusOr<std::vector<int32_t>> LoadDraftVocab(const std::string& path, int64_t vocab_size);

// The `size` most frequent ids of `counts` (counts[id] = occurrences; ties: the smaller id),
// sorted ascending.
std::vector<int32_t> TopDraftVocab(const std::vector<int64_t>& counts, int64_t size);

}  // namespace specd
