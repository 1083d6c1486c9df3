// OpenAI request bodies (POST /v1/chat/completions, /v1/completions) -> what the batcher runs.
// The JSON becomes a specd.v1.GenerateRequest and goes through the same validation as a gRPC
// request (server/validate.h), so both front ends accept and refuse exactly the same things.
// Unknown fields, wrong JSON types and parameters specd does not implement are errors, never
// silently ignored: a client that asks for logprobs or n = 3 learns it did not get them.
#pragma once

#include <string>

#include <nlohmann/json_fwd.hpp>

#include "server/cli_text.h"
#include "server/prepared_request.h"
#include "server/validate.h"
#include "util/status.h"

namespace specd::serve::http {

enum class Endpoint { kChat, kCompletion };

struct ApiRequest {
  Endpoint endpoint = Endpoint::kChat;
  PreparedRequest prepared;
  std::string model;  // as the client named it (empty: not given)
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

struct ApiContext {
  ServeLimits limits;
  const cli::TextCodec* text = nullptr;
  std::string served_model;  // the name /v1/models lists; a request naming another model is 404
};

// kInvalidArgument (400) for a malformed or unsupported request, kNotFound (404) for an unknown
// model; the message says which field.
StatusOr<ApiRequest> ParseApiRequest(Endpoint endpoint, const nlohmann::ordered_json& body, const ApiContext& ctx);

}  // namespace specd::serve::http
