// OpenAI response bodies for one request: server-sent events while it streams, or one JSON
// object at the end. Chat completions go through the Qwen3.5 output parser
// (tokenizer/chat_output_parser.h), so reasoning arrives as `reasoning_content` and tool calls as
// `tool_calls`; completions return the text as generated.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "server/http/openai_request.h"
#include "server/request_sink.h"
#include "tokenizer/chat_output_parser.h"

namespace specd::serve::http {

// The OpenAI error object: {"error": {"message", "type", "param", "code"}}.
std::string ErrorBody(int http_status, std::string_view message);
// The HTTP status for a specd status (400, 404, 409, 429, 500, 503, ...).
int HttpStatusOf(const Status& st);

class ResponseWriter {
 public:
  struct Meta {
    Endpoint endpoint = Endpoint::kChat;
    std::string id;  // chatcmpl-... / cmpl-...
    std::string model;
    int64_t created = 0;  // unix seconds
    bool include_usage = false;
  };
  // Fails only when the request's tools cannot drive the parser (a 400).
  static StatusOr<ResponseWriter> Create(Meta meta, const ChatOutputSpec& spec);

  // ---- streaming (each returns complete SSE frames, possibly none) ----
  std::string StreamStart();  // chat: the first chunk, {"role": "assistant"}
  std::string StreamText(std::string_view text);
  std::string StreamEnd(const RequestOutcome& outcome);  // the rest, the finish chunk, usage, [DONE]
  static std::string StreamError(const Status& st);       // an error event, then [DONE]

  // ---- one JSON body ----
  void Add(std::string_view text);
  std::string Body(const RequestOutcome& outcome);

 private:
  explicit ResponseWriter(Meta meta) : meta_(std::move(meta)) {}
  // Text through the parser (chat) or as is (completions).
  ChatOutputDelta Parse(std::string_view text, bool final);
  std::string Chunk(const ChatOutputDelta& d);  // SSE frames for one delta
  std::string ReasonText(const RequestOutcome& o) const;

  Meta meta_;
  std::optional<ChatOutputParser> parser_;
  int tool_calls_ = 0;  // tool calls sent so far (their index)
  // One JSON body: what the parser produced so far.
  std::string reasoning_, content_;
  std::vector<std::pair<std::string, ParsedToolCall>> calls_;  // (id, call)
};

}  // namespace specd::serve::http
