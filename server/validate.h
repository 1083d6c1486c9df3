// Turns a GenerateRequest into what the engine runs, or a clear INVALID_ARGUMENT. Runs on the
// gRPC thread that received the request, before it is queued, so a bad request never reaches
// the scheduler or the engine.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "server/cli_text.h"
#include "server/prepared_request.h"
#include "speculative/engine.h"
#include "specd/v1/specd.pb.h"

namespace specd::serve {

struct ServeLimits {
  int64_t vocab_size = 0;
  int64_t max_context = 0;  // prompt + max_tokens must fit
  int max_k = 16;
  std::vector<std::string> drafters;  // the server's, default first (empty: none)
};

struct PrepareDefaults {
  // An unset max_tokens means "what the context has room for" (OpenAI chat completions), not 16.
  bool max_tokens_fill_context = false;
};

// Defaults when a field is unset (proto3 optional): max_tokens 16, temperature 0 (greedy),
// top_p 1, top_k 0, min_p 0, seed 0, skip_special_tokens true, k = the server's.
StatusOr<PreparedRequest> PrepareGenerate(const v1::GenerateRequest& r, const ServeLimits& lim,
                                          const cli::TextCodec& text, const PrepareDefaults& defaults = {});

// Chat messages -> the prompt text of the tokenizer's chat template.
StatusOr<cli::ChatEncoding> EncodeChat(const v1::ChatPrompt& chat, const cli::TextCodec& text);

}  // namespace specd::serve
