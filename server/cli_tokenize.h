#pragma once

#include <string>

#include "util/status.h"

namespace specd::cli {

struct TokenizeArgs {
  std::string tokenizer, text, input;
};
// Prints {"cases":[{"ids":[...], "decoded":"..."}]} for --text or a JSON list of strings.
Status RunTokenize(const TokenizeArgs& a);

}  // namespace specd::cli
