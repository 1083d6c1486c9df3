#include "mini_tokenizer.h"

#include "tokenizer/byte_level.h"

namespace specd::testing {

nlohmann::json MiniTokenizerJson() {
  using nlohmann::json;
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level::ByteToChar(static_cast<uint8_t>(b))] = b;
  vocab["ab"] = 256;
  vocab["abc"] = 257;
  vocab["Ġa"] = 258;
  vocab["Ġab"] = 259;
  const std::string qwen_split =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  return json{
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens",
       json::array({
           {{"id", 260}, {"content", "<X>"}, {"single_word", false}, {"lstrip", true},
            {"rstrip", true}, {"normalized", false}, {"special", true}},
           {{"id", 261}, {"content", "\xC7\x98"}, {"single_word", false}, {"lstrip", false},
            {"rstrip", false}, {"normalized", true}, {"special", false}},
       })},
      {"normalizer", {{"type", "NFC"}}},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         json::array({
             {{"type", "Split"}, {"pattern", {{"Regex", qwen_split}}}, {"behavior", "Isolated"},
              {"invert", false}},
             {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false},
              {"use_regex", false}},
         })}}},
      {"post_processor", nullptr},
      {"decoder",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false},
        {"use_regex", false}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", ""},
        {"end_of_word_suffix", ""},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", json::array({json::array({"a", "b"}), json::array({"ab", "c"}),
                                json::array({"Ġ", "a"}), json::array({"Ġa", "b"})})}}},
  };
}

}  // namespace specd::testing
