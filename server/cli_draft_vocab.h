#pragma once

#include <string>
#include <vector>

#include "util/status.h"

namespace specd::cli {

struct DraftVocabArgs {
  std::string tokenizer, out;
  int64_t size = 32768;
  std::vector<std::string> files;
};
// Counts the tokens of `files` (texts) with the tokenizer and writes the `size` most frequent ids
// as a draft vocabulary (speculative/draft_vocab.h) to `out`.
Status RunDraftVocab(const DraftVocabArgs& a);

}  // namespace specd::cli
