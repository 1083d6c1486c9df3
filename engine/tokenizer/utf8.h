// UTF-8 scanning shared by Encode (strict validation) and Decode / streaming (lossy repair).
// Lossy repair follows the Unicode "maximal subpart" rule, which is what Rust's
// String::from_utf8_lossy (and therefore HF tokenizers' decode) does: each maximal invalid
// subpart becomes exactly one U+FFFD, so a streamed decode can reproduce the full decode.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace specd::utf8 {

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

enum class SeqKind {
  kValid,       // a complete, well-formed character of `len` bytes
  kInvalid,     // a maximal invalid subpart of `len` bytes (>= 1): one U+FFFD
  kIncomplete,  // `len` bytes that are a valid prefix cut off by the end of the input
};

struct Seq {
  SeqKind kind;
  size_t len;
};

// Classifies the sequence starting at s[pos] (pos < s.size()).
Seq ScanOne(std::string_view s, size_t pos);

// Offset of the first byte that is not part of well-formed UTF-8, or nullopt if s is valid.
std::optional<size_t> FirstInvalidByte(std::string_view s);

// Appends s to out, replacing each maximal invalid subpart (including a truncated tail) by
// U+FFFD.
void AppendLossy(std::string_view s, std::string& out);

// Decodes the well-formed character at s[pos]; the caller guarantees validity.
char32_t DecodeValid(std::string_view s, size_t pos, size_t* len);

// Unicode White_Space (what Rust's char::is_whitespace tests), used by added-token l/rstrip.
bool IsWhiteSpace(char32_t c);

}  // namespace specd::utf8
