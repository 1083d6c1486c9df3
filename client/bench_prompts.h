// Prompts for `specd-client bench`: a JSONL file, or the built-in set.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace specd::client {

struct BenchPrompt {
  std::string text;            // used when ids is empty
  std::vector<int32_t> ids;
  std::optional<uint32_t> max_tokens;
};

// One JSON object per line: {"prompt": "..."} or {"prompt_ids": [...]}, optional "max_tokens".
// Empty lines are skipped. False + *error (naming the line) on a malformed line.
bool LoadPromptsJsonl(const std::string& path, std::vector<BenchPrompt>* out, std::string* error);

// Built-in set: text prompts when the server has a tokenizer, else token-id prompts valid for
// any vocabulary of at least 512 ids (ids 3..499, so no bos/eos/pad), with repeated phrases so
// that the n-gram drafter has something to find.
std::vector<BenchPrompt> BuiltinPrompts(bool text);

}  // namespace specd::client
