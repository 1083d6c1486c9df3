// Reading HF tokenizer.json / tokenizer_config.json into plain structs, and the gate that
// rejects every component we do not implement exactly (a silent wrong encoding is worse than
// a load error).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "util/status.h"

namespace specd::tokenizer_internal {

struct AddedTokenSpec {
  int32_t id = -1;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

struct TokenizerSpec {
  bool nfc = false;                 // normalizer: NFC (or none)
  std::string split_pattern;        // Split pre-tokenizer regex, Oniguruma syntax as in the file
  std::vector<std::pair<std::string, int32_t>> vocab;  // ByteLevel-mapped strings
  std::vector<std::pair<std::string, std::string>> merges;
  bool ignore_merges = false;
  std::vector<AddedTokenSpec> added_tokens;
};

StatusOr<TokenizerSpec> ParseTokenizerJson(std::string_view text);

struct TokenizerConfigSpec {
  std::string chat_template;  // empty when absent
  std::optional<std::string> eos_token;
  std::optional<std::string> pad_token;
};

StatusOr<TokenizerConfigSpec> ParseTokenizerConfigJson(std::string_view text);

}  // namespace specd::tokenizer_internal
