// Invalid UTF-8: Encode refuses it (kInvalidArgument naming the first bad byte); decoding
// repairs bytes with one U+FFFD per maximal invalid subpart.
#include <gtest/gtest.h>

#include "fixtures.h"
#include "tokenizer/utf8.h"

namespace specd {
namespace {

using testing::Qwen3;

void ExpectInvalidAt(std::string_view text, size_t offset) {
  auto ids = Qwen3().Encode(text);
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(ids.status().message().find(fmt::format("invalid UTF-8 at byte offset {} ", offset)),
            std::string::npos)
      << ids.status().message();
}

TEST(InvalidUtf8, EncodeNamesTheFirstBadByte) {
  ExpectInvalidAt("abc\xFF" "def", 3);
  ExpectInvalidAt("\x80", 0);                        // lone continuation byte
  ExpectInvalidAt("ok \xC0\xAF", 3);                 // overlong '/'
  ExpectInvalidAt("x\xED\xA0\x80", 1);               // UTF-16 surrogate D800
  ExpectInvalidAt("\xF4\x90\x80\x80", 0);            // above U+10FFFF
  ExpectInvalidAt("ab\xE2\x82", 2);                  // truncated at the end
  ExpectInvalidAt("12345678901234567\xE9t\xE9", 17);  // Latin-1, past the 8-byte ASCII skip
  ExpectInvalidAt("<|im_start|>\xFE", 12);           // also when next to an added token
}

TEST(InvalidUtf8, EncodeToLeavesOutputUntouched) {
  std::vector<int32_t> out = {1, 2, 3};
  EXPECT_FALSE(Qwen3().EncodeTo("good \xFF bad", &out).ok());
  EXPECT_EQ(out, (std::vector<int32_t>{1, 2, 3}));
  ASSERT_TRUE(Qwen3().EncodeTo("Hello", &out).ok());
  EXPECT_EQ(out, (std::vector<int32_t>{1, 2, 3, 9707}));  // appended
}

TEST(InvalidUtf8, ValidEdgeCodePointsAreAccepted) {
  // NUL, U+FFFF, U+10FFFF and U+FEFF are valid UTF-8 and must encode and round-trip.
  for (std::string_view s : {std::string_view("a\0b", 3), std::string_view("\xEF\xBF\xBF"),
                             std::string_view("\xF4\x8F\xBF\xBF"), std::string_view("\xEF\xBB\xBF" "x")}) {
    auto ids = Qwen3().Encode(s);
    ASSERT_TRUE(ids.ok()) << ids.status().ToString();
    EXPECT_EQ(Qwen3().Decode(*ids), s);
  }
}

TEST(Utf8, LossyRepairFollowsTheUnicodeExample) {
  // Unicode 15 §3.9, Table 3-8: 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64 becomes
  // a FFFD FFFD FFFD b FFFD c FFFD FFFD d.
  std::string out;
  utf8::AppendLossy("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64", out);
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(out, "a" + r + r + r + "b" + r + "c" + r + r + "d");
}

TEST(Utf8, FirstInvalidByte) {
  EXPECT_EQ(utf8::FirstInvalidByte(""), std::nullopt);
  EXPECT_EQ(utf8::FirstInvalidByte("plain ascii text that is long"), std::nullopt);
  EXPECT_EQ(utf8::FirstInvalidByte("h\xC3\xA9llo \xF0\x9F\x98\x80"), std::nullopt);
  EXPECT_EQ(utf8::FirstInvalidByte("h\xC3"), 1u);
  EXPECT_EQ(utf8::FirstInvalidByte("\xE0\x9F\x80"), 0u);  // overlong 3-byte form
}

}  // namespace
}  // namespace specd
