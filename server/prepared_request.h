// A validated generation request, as the batcher takes it: the transport's request (gRPC,
// HTTP) has been checked and turned into engine terms (server/validate.h for gRPC).
#pragma once

#include <string>
#include <vector>

#include "server/cli_text.h"
#include "speculative/engine.h"

namespace specd::serve {

// How a chat completion's text is split for the client (reasoning, content, tool calls):
// what the transport's output parser needs to know about the prompt.
struct ChatOutputSpec {
  bool parse = false;                // a chat prompt whose output is split
  bool starts_in_reasoning = false;  // the prompt ended inside "<think>"
  bool parse_tool_calls = false;     // the request declared tools
  std::vector<std::string> tools_json;
};

struct PreparedRequest {
  std::string request_id;  // as sent; the batcher assigns one when empty
  GenerationRequest gen;
  cli::TextStreamOptions text;
  ChatOutputSpec chat_output;
};

}  // namespace specd::serve
