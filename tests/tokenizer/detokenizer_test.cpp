// Streaming detokenization: fed one id at a time it must reproduce HF's full decode, emit only
// complete UTF-8, and apply stop strings that straddle token boundaries.
#include <gtest/gtest.h>

#include "fixtures.h"
#include "tokenizer/incremental_detokenizer.h"
#include "tokenizer/utf8.h"

namespace specd {
namespace {

using testing::Qwen3;
using testing::ReadJson;

constexpr std::string_view kFffd = "\xEF\xBF\xBD";

// Streams ids one by one; checks each chunk is complete UTF-8; returns the concatenation.
std::string Stream(const std::vector<int32_t>& ids, DetokenizerOptions opt,
                   IncrementalDetokenizer** keep = nullptr) {
  static thread_local std::unique_ptr<IncrementalDetokenizer> last;
  last = std::make_unique<IncrementalDetokenizer>(Qwen3(), std::move(opt));
  std::string out;
  for (int32_t id : ids) {
    const std::string chunk = last->Feed(id);
    EXPECT_EQ(utf8::FirstInvalidByte(chunk), std::nullopt) << "partial UTF-8 emitted";
    out += chunk;
  }
  out += last->Finish();
  if (keep) *keep = last.get();
  return out;
}

std::vector<int32_t> Ids(std::string_view text) {
  auto ids = Qwen3().Encode(text);
  EXPECT_TRUE(ids.ok());
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

TEST(Detokenizer, TokenByTokenEqualsFullDecodeForEveryPublicCase) {
  const auto cases = ReadJson(testing::Qwen3Dir() + "/tok_ref_public.json")["cases"];
  ASSERT_EQ(cases.size(), 123u);
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto ids = cases[i]["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(Stream(ids, {.skip_special_tokens = false, .stop_strings = {}}), cases[i]["decoded"].get<std::string>())
        << "case " << i;
    EXPECT_EQ(Stream(ids, {.skip_special_tokens = true, .stop_strings = {}}),
              cases[i]["decoded_skip_special"].get<std::string>())
        << "case " << i;
  }
}

TEST(Detokenizer, TokenByTokenEqualsFullDecodeForEdgeCases) {
  const auto ref = ReadJson(testing::TestData("qwen3_edge_ref.json"));
  for (const auto& c : ref["cases"]) {
    EXPECT_EQ(Stream(c["ids"].get<std::vector<int32_t>>(), {.skip_special_tokens = false, .stop_strings = {}}),
              c["decoded"].get<std::string>());
  }
}

TEST(Detokenizer, HoldsBackCharactersSplitAcrossTokens) {
  // prefix_decodes[k] is HF's decode of the first k ids: an unfinished character shows there as
  // a trailing U+FFFD, which a stream must not emit yet.
  const auto ref = ReadJson(testing::TestData("qwen3_edge_ref.json"));
  for (const auto& c : ref["split_chars"]) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    IncrementalDetokenizer d(Qwen3());
    std::string so_far;
    for (size_t k = 0; k < ids.size(); ++k) {
      so_far += d.Feed(ids[k]);
      std::string want = c["prefix_decodes"][k + 1];
      if (k + 1 < ids.size()) {
        while (std::string_view(want).ends_with(kFffd)) want.resize(want.size() - kFffd.size());
      }
      EXPECT_EQ(so_far, want) << c["text"].get<std::string>() << " after " << k + 1 << " ids";
    }
    EXPECT_EQ(d.Finish(), "");
  }
}

TEST(Detokenizer, InvalidBytesBecomeReplacementLikeHf) {
  const auto ref = ReadJson(testing::TestData("qwen3_edge_ref.json"));
  for (const auto& c : ref["lossy"]) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(Stream(ids, {}), c["decoded"].get<std::string>()) << c["bytes"].dump();
    EXPECT_EQ(Qwen3().Decode(ids), c["decoded"].get<std::string>()) << c["bytes"].dump();
  }
}

TEST(Detokenizer, StopStringAcrossTokenBoundary) {
  const auto ids = Ids("Hello world, and more");
  ASSERT_EQ(Qwen3().Decode(std::span(ids.data(), 2)), "Hello world");  // "Hello" | " world" | ...
  IncrementalDetokenizer d(Qwen3(), {.skip_special_tokens = true, .stop_strings = {"never", "lo wor"}});
  EXPECT_EQ(d.Feed(ids[0]), "Hel");  // "lo" could start "lo wor": held back
  EXPECT_FALSE(d.stopped());
  EXPECT_EQ(d.Feed(ids[1]), "");
  EXPECT_TRUE(d.stopped());
  EXPECT_EQ(d.stop_index(), 1u);
  EXPECT_EQ(d.Feed(ids[2]), "");  // nothing after a stop
  EXPECT_EQ(d.Finish(), "");
}

TEST(Detokenizer, HeldPrefixIsReleasedWhenItStopsMatching) {
  const auto ids = Ids("Hello world");
  IncrementalDetokenizer d(Qwen3(), {.skip_special_tokens = true, .stop_strings = {"lo there"}});
  EXPECT_EQ(d.Feed(ids[0]), "Hel");
  EXPECT_EQ(d.Feed(ids[1]), "lo world");
  EXPECT_EQ(d.Finish(), "");
  EXPECT_FALSE(d.stopped());
}

TEST(Detokenizer, PrefixHeldUntilEndOfStreamIsFlushed) {
  const auto ids = Ids("Hello wor");
  IncrementalDetokenizer* d = nullptr;
  EXPECT_EQ(Stream(ids, {.skip_special_tokens = true, .stop_strings = {"world!"}}, &d), "Hello wor");
  EXPECT_FALSE(d->stopped());
}

TEST(Detokenizer, StopStringInsideMultiByteCharacters) {
  // 𠀀 (F0 A0 80 80) is three tokens in Qwen3's vocabulary; the stop string starts mid-way
  // through the text that those tokens spell.
  const auto ids = Ids("ab𠀀cd");
  IncrementalDetokenizer* d = nullptr;
  EXPECT_EQ(Stream(ids, {.skip_special_tokens = true, .stop_strings = {"𠀀c"}}, &d), "ab");
  EXPECT_TRUE(d->stopped());
  EXPECT_EQ(Stream(ids, {.skip_special_tokens = true, .stop_strings = {"b𠀀"}}, &d), "a");
  EXPECT_EQ(Stream(ids, {.skip_special_tokens = true, .stop_strings = {"𠀁"}}, &d), "ab𠀀cd");
  EXPECT_FALSE(d->stopped());
}

TEST(Detokenizer, StopOnSpecialTokenTextOnlyWhenNotSkipped) {
  const auto ids = Ids("answer<|im_end|>\ntrailing");
  IncrementalDetokenizer* d = nullptr;
  EXPECT_EQ(Stream(ids, {.skip_special_tokens = false, .stop_strings = {"<|im_end|>"}}, &d), "answer");
  EXPECT_TRUE(d->stopped());
  EXPECT_EQ(Stream(ids, {.skip_special_tokens = true, .stop_strings = {"<|im_end|>"}}, &d),
            "answer\ntrailing");
  EXPECT_FALSE(d->stopped());
}

TEST(Detokenizer, StopAtVeryStart) {
  IncrementalDetokenizer* d = nullptr;
  EXPECT_EQ(Stream(Ids("STOP here"), {.skip_special_tokens = true, .stop_strings = {"STOP"}}, &d), "");
  EXPECT_EQ(d->stop_index(), 0u);
}

}  // namespace
}  // namespace specd
