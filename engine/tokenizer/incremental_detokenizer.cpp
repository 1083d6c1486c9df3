#include "tokenizer/incremental_detokenizer.h"

#include "tokenizer/utf8.h"

namespace specd {

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer, DetokenizerOptions options)
    : tok_(tokenizer),
      skip_special_(options.skip_special_tokens),
      stops_(std::move(options.stop_strings)) {}

std::string IncrementalDetokenizer::Feed(int32_t id) {
  if (stopped() || (skip_special_ && tok_.IsSpecial(id))) return {};
  pending_ += tok_.TokenBytes(id);
  // Emit every character that is decided: complete ones as they are, invalid subparts as
  // U+FFFD. Only a valid-but-unfinished tail waits, since the next id may complete it.
  std::string text;
  size_t i = 0;
  while (i < pending_.size()) {
    const utf8::Seq q = utf8::ScanOne(pending_, i);
    if (q.kind == utf8::SeqKind::kIncomplete) break;
    if (q.kind == utf8::SeqKind::kValid) {
      text.append(pending_, i, q.len);
    } else {
      text += utf8::kReplacement;
    }
    i += q.len;
  }
  pending_.erase(0, i);
  return stops_.Push(text);
}

std::string IncrementalDetokenizer::Feed(std::span<const int32_t> ids) {
  std::string out;
  for (int32_t id : ids) out += Feed(id);
  return out;
}

std::string IncrementalDetokenizer::Finish() {
  std::string tail;
  utf8::AppendLossy(pending_, tail);
  pending_.clear();
  std::string out = stops_.Push(tail);
  out += stops_.Flush();
  return out;
}

}  // namespace specd
