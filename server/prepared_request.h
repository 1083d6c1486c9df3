// A validated generation request, as the batcher takes it: the transport's request (gRPC,
// HTTP) has been checked and turned into engine terms (server/validate.h for gRPC).
#pragma once

#include <string>

#include "server/cli_text.h"
#include "speculative/engine.h"

namespace specd::serve {

struct PreparedRequest {
  std::string request_id;  // as sent; the batcher assigns one when empty
  GenerationRequest gen;
  cli::TextStreamOptions text;
};

}  // namespace specd::serve
