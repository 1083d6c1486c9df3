// The Split(Regex, Isolated) pre-tokenizer on PCRE2. HF compiles these patterns with
// Oniguruma; the translation below keeps the two engines in agreement for the constructs the
// Qwen patterns use, and refuses the ones whose meaning differs between them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "util/status.h"

namespace specd::tokenizer_internal {

// Rewrites an Oniguruma pattern into PCRE2 syntax with the same meaning, or fails for
// constructs whose meaning differs (\w, \b, \h, \R, ^, $, ...). Exposed for tests.
StatusOr<std::string> TranslateOnigPattern(std::string_view onig);

struct Piece {
  uint32_t begin;
  uint32_t end;
};

class RegexSplitter {
 public:
  static StatusOr<std::unique_ptr<RegexSplitter>> Create(std::string_view onig_pattern);
  ~RegexSplitter();
  RegexSplitter(const RegexSplitter&) = delete;
  RegexSplitter& operator=(const RegexSplitter&) = delete;

  // Appends the non-empty pieces of `text` in order: every match and every gap between
  // matches (Isolated). `text` must be valid UTF-8 (the caller validated it). Thread-safe.
  Status Split(std::string_view text, std::vector<Piece>& out) const;

 private:
  RegexSplitter() = default;
  void* code_ = nullptr;  // pcre2_code_8*, kept opaque so users need no PCRE2 headers
  bool jit_ = false;
};

}  // namespace specd::tokenizer_internal
