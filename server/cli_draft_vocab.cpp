// `specd draft-vocab` (docs/mtp.md, "Reduced draft vocabulary"): the most frequent tokens of a
// corpus, the only ones the MTP head then drafts (`--mtp-vocab`).
#include "server/cli_draft_vocab.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "speculative/draft_vocab.h"
#ifdef SPECD_HAVE_TOKENIZER
#include "tokenizer/tokenizer.h"
#endif

namespace specd::cli {

Status RunDraftVocab(const DraftVocabArgs& a) {
#ifndef SPECD_HAVE_TOKENIZER
  (void)a;
  return Unimplemented("this build of specd has no tokenizer (configure with -DSPECD_TOKENIZER=ON)");
#else
  if (a.files.empty()) return InvalidArgument("give the corpus: one or more text files");
  if (a.size < 1) return InvalidArgument("--size must be >= 1 (got {})", a.size);
  SPECD_ASSIGN_OR_RETURN(auto tok, Tokenizer::Load(a.tokenizer));
  std::vector<int64_t> counts(static_cast<size_t>(tok->vocab_size()), 0);
  int64_t total = 0;
  for (const auto& f : a.files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) return NotFound("cannot open {}", f);
    std::stringstream ss;
    ss << in.rdbuf();
    SPECD_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok->Encode(ss.str()));
    for (int32_t id : ids) ++counts[static_cast<size_t>(id)];
    total += static_cast<int64_t>(ids.size());
  }
  const std::vector<int32_t> ids = TopDraftVocab(counts, a.size);
  int64_t covered = 0;
  for (int32_t id : ids) covered += counts[static_cast<size_t>(id)];
  nlohmann::json doc{{"ids", ids},
                     {"vocab_size", tok->vocab_size()},
                     {"corpus_files", a.files.size()},
                     {"corpus_tokens", total},
                     {"corpus_coverage", total > 0 ? static_cast<double>(covered) / static_cast<double>(total) : 0.0}};
  std::ofstream out(a.out);
  if (!out) return NotFound("cannot write {}", a.out);
  out << doc.dump() << "\n";
  std::fprintf(stderr, "draft vocabulary: %zu of %d tokens, covering %.2f %% of the corpus's %lld tokens -> %s\n",
               ids.size(), tok->vocab_size(), 100.0 * doc["corpus_coverage"].get<double>(),
               static_cast<long long>(total), a.out.c_str());
  return Status::Ok();
#endif
}

}  // namespace specd::cli
