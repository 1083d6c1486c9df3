// Loading: a hand-made tokenizer whose ids are worked out by hand, and every malformed or
// unsupported tokenizer.json producing a clear error instead of a tokenizer.
#include <gtest/gtest.h>

#include <filesystem>

#include "fixtures.h"
#include "mini_tokenizer.h"

namespace specd {
namespace {

using nlohmann::json;
using testing::MiniTokenizerJson;

std::unique_ptr<Tokenizer> Mini() {
  auto t = Tokenizer::FromJson(MiniTokenizerJson().dump());
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(t).value() : nullptr;
}

std::vector<int32_t> Enc(const Tokenizer& t, std::string_view s) {
  auto ids = t.Encode(s);
  EXPECT_TRUE(ids.ok()) << ids.status().ToString();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

// Expects FromJson(j) to fail with `code` and a message containing every `needles`.
void ExpectError(const json& j, StatusCode code, std::initializer_list<std::string_view> needles) {
  auto t = Tokenizer::FromJson(j.dump());
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), code) << t.status().ToString();
  for (auto n : needles) EXPECT_NE(t.status().message().find(n), std::string::npos) << t.status().ToString();
}

using Ids = std::vector<int32_t>;

TEST(MiniTokenizer, MergesByRank) {
  auto t = Mini();
  ASSERT_TRUE(t);
  EXPECT_EQ(Enc(*t, "abc"), (Ids{257}));
  // " ab": (a,b) has rank 0 and goes first, leaving (Ġ,ab), which is no merge; "Ġab" is in
  // the vocabulary but unreachable, as in HF.
  EXPECT_EQ(Enc(*t, " ab"), (Ids{32, 256}));
  EXPECT_EQ(Enc(*t, " ac"), (Ids{258, 'c'}));
  // One piece: both (a,b) merge first (leftmost first), then (ab,c) -> "ab" "abc".
  EXPECT_EQ(Enc(*t, "ababc"), (Ids{256, 257}));
}

TEST(MiniTokenizer, AddedTokensStripAndNormalize) {
  auto t = Mini();
  ASSERT_TRUE(t);
  // <X> has lstrip and rstrip: the spaces around it belong to it.
  EXPECT_EQ(Enc(*t, "a <X>  b"), (Ids{'a', 260, 'b'}));
  EXPECT_EQ(Enc(*t, "<X>"), (Ids{260}));
  // "ǘ" is a normalized added token: it also matches u + U+0308 + U+0301, whose NFC it is.
  EXPECT_EQ(Enc(*t, "xu\xCC\x88\xCC\x81y"), (Ids{'x', 261, 'y'}));
  EXPECT_EQ(Enc(*t, "x\xC7\x98y"), (Ids{'x', 261, 'y'}));
  EXPECT_EQ(t->Decode(Ids{'a', 260, 'b'}, /*skip_special_tokens=*/false), "a<X>b");
  EXPECT_EQ(t->Decode(Ids{'a', 260, 'b'}, /*skip_special_tokens=*/true), "ab");
  EXPECT_EQ(t->Decode(Ids{261}), "\xC7\x98");
  EXPECT_TRUE(t->IsSpecial(260));
  EXPECT_FALSE(t->IsSpecial(261));
  EXPECT_EQ(t->vocab_size(), 262);
}

TEST(LoadErrors, AddedTokenIdsMustBeTheOnesHfAssigns) {
  json j = MiniTokenizerJson();
  j["added_tokens"][0]["id"] = 300;  // HF would number it 260
  ExpectError(j, StatusCode::kInvalidArgument, {"'<X>'", "id 300", "assigns it id 260"});
}

TEST(LoadErrors, BadJson) {
  auto t = Tokenizer::FromJson("{\"model\": ");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find("tokenizer.json: malformed"), std::string::npos);
}

TEST(LoadErrors, TruncatedRealFile) {
  const std::string text = testing::ReadText(testing::Qwen3Dir() + "/tokenizer.json");
  auto t = Tokenizer::FromJson(std::string_view(text).substr(0, text.size() / 2));
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
}

TEST(LoadErrors, WrongTypes) {
  json j = MiniTokenizerJson();
  j["model"]["vocab"]["ab"] = "not a number";
  ExpectError(j, StatusCode::kInvalidArgument, {"tokenizer.json: malformed"});
  ExpectError(json::array(), StatusCode::kInvalidArgument, {"not an object"});
}

TEST(LoadErrors, UnknownModelType) {
  json j = MiniTokenizerJson();
  j["model"]["type"] = "WordPiece";
  ExpectError(j, StatusCode::kUnimplemented, {"model", "WordPiece"});
  j["model"]["type"] = "Unigram";
  ExpectError(j, StatusCode::kUnimplemented, {"Unigram"});
}

TEST(LoadErrors, UnsupportedPreTokenizers) {
  json j = MiniTokenizerJson();
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "▁"}};
  ExpectError(j, StatusCode::kUnimplemented, {"pre_tokenizer", "Metaspace"});
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  ExpectError(j, StatusCode::kUnimplemented, {"pre_tokenizer", "ByteLevel"});
  j["pre_tokenizer"] = nullptr;
  ExpectError(j, StatusCode::kUnimplemented, {"pre_tokenizer"});

  json seq = MiniTokenizerJson();
  seq["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "MergedWithPrevious";
  ExpectError(seq, StatusCode::kUnimplemented, {"MergedWithPrevious"});
  seq = MiniTokenizerJson();
  seq["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = true;
  ExpectError(seq, StatusCode::kUnimplemented, {"add_prefix_space"});
  seq = MiniTokenizerJson();
  seq["pre_tokenizer"]["pretokenizers"].push_back({{"type", "Digits"}, {"individual_digits", true}});
  ExpectError(seq, StatusCode::kUnimplemented, {"Split, ByteLevel, Digits"});
}

TEST(LoadErrors, UnsupportedRegexConstructs) {
  json j = MiniTokenizerJson();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = R"(\w+|\s+)";
  ExpectError(j, StatusCode::kUnimplemented, {"\\w"});
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  ExpectError(j, StatusCode::kInvalidArgument, {"does not compile"});
}

TEST(LoadErrors, UnsupportedNormalizerDecoderAndOptions) {
  json j = MiniTokenizerJson();
  j["normalizer"] = {{"type", "NFKC"}};
  ExpectError(j, StatusCode::kUnimplemented, {"normalizer", "NFKC"});
  j = MiniTokenizerJson();
  j["decoder"] = {{"type", "WordPiece"}};
  ExpectError(j, StatusCode::kUnimplemented, {"decoder", "WordPiece"});
  j = MiniTokenizerJson();
  j["truncation"] = {{"max_length", 8}};
  ExpectError(j, StatusCode::kUnimplemented, {"truncation"});
  j = MiniTokenizerJson();
  j["model"]["dropout"] = 0.1;
  ExpectError(j, StatusCode::kUnimplemented, {"dropout"});
  j = MiniTokenizerJson();
  j["added_tokens"][0]["single_word"] = true;
  ExpectError(j, StatusCode::kUnimplemented, {"single_word"});
}

TEST(LoadErrors, InconsistentVocabulary) {
  json j = MiniTokenizerJson();
  j["model"]["merges"].push_back(json::array({"abc", "zz"}));
  ExpectError(j, StatusCode::kInvalidArgument, {"merge 4"});
  j = MiniTokenizerJson();
  j["model"]["vocab"].erase("Ġ");  // the space byte
  ExpectError(j, StatusCode::kUnimplemented, {"0x20"});
}

TEST(LoadErrors, MissingFiles) {
  EXPECT_EQ(Tokenizer::Load("/nonexistent/tokenizer.json").status().code(), StatusCode::kNotFound);
  const auto dir = std::filesystem::temp_directory_path() / "specd_tok_empty_dir";
  std::filesystem::create_directories(dir);
  auto t = Tokenizer::Load(dir.string());
  EXPECT_EQ(t.status().code(), StatusCode::kNotFound);
  EXPECT_NE(t.status().message().find("tokenizer.json"), std::string::npos);
}

TEST(LoadErrors, BadConfigEosToken) {
  auto t = Tokenizer::FromJson(MiniTokenizerJson().dump(), R"({"eos_token": "<nope>"})");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("<nope>"), std::string::npos);
  auto ok = Tokenizer::FromJson(MiniTokenizerJson().dump(), R"({"eos_token": {"content": "<X>"}})");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ((*ok)->eos_token_id(), 260);
}

}  // namespace
}  // namespace specd
