// Streaming detokenization: ids in, text out, emitting only complete UTF-8 so that a client
// never sees half a character, and applying stop strings across token boundaries. The
// concatenation of everything returned equals Tokenizer::Decode of all ids fed (truncated
// before the stop string, when one matched).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "tokenizer/stop_strings.h"
#include "tokenizer/tokenizer.h"

namespace specd {

struct DetokenizerOptions {
  bool skip_special_tokens = true;
  std::vector<std::string> stop_strings;
};

class IncrementalDetokenizer {
 public:
  // `tokenizer` must outlive this object.
  explicit IncrementalDetokenizer(const Tokenizer& tokenizer, DetokenizerOptions options = {});

  // Returns the text that became final with this id (often empty: a partial character or a
  // possible stop-string prefix is held back). Returns "" once stopped.
  std::string Feed(int32_t id);
  std::string Feed(std::span<const int32_t> ids);
  // End of stream: releases held-back text; an unfinished character becomes U+FFFD, as in
  // Decode.
  std::string Finish();

  bool stopped() const { return stops_.stopped(); }
  // Index into options.stop_strings of the stop string that ended the stream.
  std::optional<size_t> stop_index() const { return stops_.matched_index(); }

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::string pending_;  // bytes of a character not yet complete
  StopStringMatcher stops_;
};

}  // namespace specd
