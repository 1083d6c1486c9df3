// Added tokens (specials like <|im_start|> and plain ones like <think>) are cut out of the text
// before normalisation and BPE, the way HF's AddedVocabulary does: leftmost match, longest at
// that position, with optional stripping of the whitespace around a token.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace specd::tokenizer_internal {

struct AddedToken {
  int32_t id;
  std::string content;  // for normalized tokens: the content after normalisation
  bool lstrip;
  bool rstrip;
  bool special = false;  // a control token (e.g. <|im_start|>): never matched inside a literal range
};

// Bytes [begin, end) of a text that are literal: no special added token is matched across any
// byte of them (they are tokenized as the characters they are made of).
struct LiteralRange {
  size_t begin;
  size_t end;
};

struct Segment {
  size_t begin;
  size_t end;
  int32_t id;  // -1: ordinary text for the model
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(std::vector<AddedToken> tokens);

  bool empty() const { return tokens_.empty(); }
  // Splits valid UTF-8 text into ordinary text and added tokens, in order, no empty pieces.
  // `literal`: sorted, non-overlapping ranges of `text` where special tokens are not matched.
  void Split(std::string_view text, std::vector<Segment>& out, std::span<const LiteralRange> literal = {}) const;
  bool has_special() const { return has_special_; }

 private:
  std::vector<AddedToken> tokens_;
  // Candidates per first byte, longest first, so the first hit at a position is the longest.
  std::array<std::vector<uint32_t>, 256> by_first_{};
  int single_first_ = -1;
  bool has_special_ = false;  // when every token starts with the same byte: memchr over the text
};

}  // namespace specd::tokenizer_internal
