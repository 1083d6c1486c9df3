#include "server/http/openai_response.h"

#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace specd::serve::http {
namespace {

using Json = nlohmann::ordered_json;

std::string ToolCallId() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("call_{:016x}{:08x}", rng(), static_cast<uint32_t>(rng()));
}

const char* ErrorType(int http_status) {
  switch (http_status) {
    case 401: return "authentication_error";
    case 411:
    case 415: return "invalid_request_error";
    case 404: return "not_found_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable";
    default: return http_status >= 500 ? "server_error" : "invalid_request_error";
  }
}

Json Usage(const RequestOutcome& o) {
  const SpeculativeStats& s = o.stats;
  return Json{{"prompt_tokens", o.prompt_tokens},
              {"completion_tokens", o.completion_tokens},
              {"total_tokens", o.prompt_tokens + o.completion_tokens},
              // specd's extension: how speculation went for this request.
              {"speculative",
               {{"draft_tokens", s.draft_tokens},
                {"accepted_tokens", s.accepted_tokens},
                {"verify_steps", s.verify_steps},
                {"acceptance_rate", s.acceptance_rate()},
                {"mean_acceptance_length", s.mean_acceptance_length()}}}};
}

std::string Sse(const Json& j) {
  // error_handler replace: text is valid UTF-8 by construction (the detokenizer emits whole
  // characters), but a JSON dump must never throw on a server thread.
  return "data: " + j.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n\n";
}

}  // namespace

int HttpStatusOf(const Status& st) {
  switch (st.code()) {
    case StatusCode::kOk: return 200;
    case StatusCode::kInvalidArgument:
    case StatusCode::kFailedPrecondition:
    case StatusCode::kOutOfRange:
    case StatusCode::kUnimplemented: return 400;
    case StatusCode::kNotFound: return 404;
    case StatusCode::kAlreadyExists: return 409;
    case StatusCode::kResourceExhausted: return 429;
    case StatusCode::kCancelled: return 499;  // the client's own doing (nginx's convention)
    case StatusCode::kDeadlineExceeded: return 504;
    case StatusCode::kUnavailable: return 503;
    default: return 500;
  }
}

std::string ErrorBody(int http_status, std::string_view message) {
  // OpenAI's "code" is a string or null (clients read it as a string): the HTTP status says the rest.
  Json e{{"error", {{"message", message}, {"type", ErrorType(http_status)}, {"param", nullptr}, {"code", nullptr}}}};
  return e.dump(-1, ' ', false, Json::error_handler_t::replace);
}

StatusOr<ResponseWriter> ResponseWriter::Create(Meta meta, const ChatOutputSpec& spec) {
  ResponseWriter w(std::move(meta));
  if (w.meta_.endpoint == Endpoint::kChat && spec.parse) {
    ChatOutputOptions opt;
    opt.starts_in_reasoning = spec.starts_in_reasoning;
    opt.parse_tool_calls = spec.parse_tool_calls;
    opt.tools_json = spec.tools_json;
    SPECD_ASSIGN_OR_RETURN(ChatOutputParser p, ChatOutputParser::Create(std::move(opt)));
    w.parser_.emplace(std::move(p));
  }
  return w;
}

ChatOutputDelta ResponseWriter::Parse(std::string_view text, bool final) {
  if (!parser_) {
    ChatOutputDelta d;
    d.content = text;
    return d;
  }
  return final ? parser_->FeedLast(text) : parser_->Feed(text);
}

std::string ResponseWriter::ReasonText(const RequestOutcome& o) const {
  switch (o.reason) {
    case specd::FinishReason::kLength: return "length";
    case specd::FinishReason::kAborted: return "abort";
    default: return tool_calls_ > 0 || !calls_.empty() ? "tool_calls" : "stop";
  }
}

std::string ResponseWriter::Chunk(const ChatOutputDelta& d) {
  const bool chat = meta_.endpoint == Endpoint::kChat;
  auto frame = [&](Json delta_or_text) {
    Json choice{{"index", 0}};
    if (chat) {
      choice["delta"] = std::move(delta_or_text);
      choice["logprobs"] = nullptr;
    } else {
      choice["text"] = std::move(delta_or_text);
      choice["logprobs"] = nullptr;
    }
    choice["finish_reason"] = nullptr;
    return Sse(Json{{"id", meta_.id},
                    {"object", chat ? "chat.completion.chunk" : "text_completion"},
                    {"created", meta_.created},
                    {"model", meta_.model},
                    {"choices", Json::array({std::move(choice)})}});
  };
  std::string out;
  if (!chat) {
    if (!d.content.empty()) out += frame(d.content);
    return out;
  }
  if (!d.reasoning.empty()) out += frame(Json{{"reasoning_content", d.reasoning}});
  if (!d.content.empty()) out += frame(Json{{"content", d.content}});
  for (const ParsedToolCall& c : d.tool_calls) {
    // A call is sent whole once its block is complete: one delta with the id, the name and all
    // of the arguments, which every OpenAI client accumulates correctly.
    out += frame(Json{{"tool_calls", Json::array({Json{{"index", tool_calls_++},
                                                        {"id", ToolCallId()},
                                                        {"type", "function"},
                                                        {"function", {{"name", c.name}, {"arguments", c.arguments_json}}}}})}});
  }
  return out;
}

std::string ResponseWriter::StreamStart() {
  if (meta_.endpoint != Endpoint::kChat) return {};
  Json choice{{"index", 0}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr},
              {"finish_reason", nullptr}};
  return Sse(Json{{"id", meta_.id},
                  {"object", "chat.completion.chunk"},
                  {"created", meta_.created},
                  {"model", meta_.model},
                  {"choices", Json::array({std::move(choice)})}});
}

std::string ResponseWriter::StreamText(std::string_view text) { return Chunk(Parse(text, false)); }

std::string ResponseWriter::StreamEnd(const RequestOutcome& o) {
  std::string out = Chunk(Parse({}, true));
  const bool chat = meta_.endpoint == Endpoint::kChat;
  Json choice{{"index", 0}};
  if (chat) {
    choice["delta"] = Json::object();
  } else {
    choice["text"] = "";
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = ReasonText(o);
  if (o.reason == specd::FinishReason::kStop && !o.stop_string.empty()) choice["stop_reason"] = o.stop_string;
  const char* object = chat ? "chat.completion.chunk" : "text_completion";
  out += Sse(Json{{"id", meta_.id},
                  {"object", object},
                  {"created", meta_.created},
                  {"model", meta_.model},
                  {"choices", Json::array({std::move(choice)})}});
  if (meta_.include_usage) {
    out += Sse(Json{{"id", meta_.id},
                    {"object", object},
                    {"created", meta_.created},
                    {"model", meta_.model},
                    {"choices", Json::array()},
                    {"usage", Usage(o)}});
  }
  out += "data: [DONE]\n\n";
  return out;
}

std::string ResponseWriter::StreamError(const Status& st) {
  return "data: " + ErrorBody(HttpStatusOf(st), st.message()) + "\n\ndata: [DONE]\n\n";
}

void ResponseWriter::Add(std::string_view text) {
  ChatOutputDelta d = Parse(text, false);
  reasoning_ += d.reasoning;
  content_ += d.content;
  for (auto& c : d.tool_calls) calls_.emplace_back(ToolCallId(), std::move(c));
}

std::string ResponseWriter::Body(const RequestOutcome& o) {
  ChatOutputDelta d = Parse({}, true);
  reasoning_ += d.reasoning;
  content_ += d.content;
  for (auto& c : d.tool_calls) calls_.emplace_back(ToolCallId(), std::move(c));
  const bool chat = meta_.endpoint == Endpoint::kChat;
  Json choice{{"index", 0}};
  if (chat) {
    Json msg{{"role", "assistant"}};
    // OpenAI's convention: content is null when the turn is only tool calls.
    msg["content"] = content_.empty() && !calls_.empty() ? Json(nullptr) : Json(content_);
    if (parser_ && !reasoning_.empty()) msg["reasoning_content"] = reasoning_;
    if (!calls_.empty()) {
      Json calls = Json::array();
      for (const auto& [id, c] : calls_) {
        calls.push_back(Json{{"id", id},
                             {"type", "function"},
                             {"function", {{"name", c.name}, {"arguments", c.arguments_json}}}});
      }
      msg["tool_calls"] = std::move(calls);
    }
    choice["message"] = std::move(msg);
  } else {
    choice["text"] = content_;
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = ReasonText(o);
  if (o.reason == specd::FinishReason::kStop && !o.stop_string.empty()) choice["stop_reason"] = o.stop_string;
  Json body{{"id", meta_.id},
            {"object", chat ? "chat.completion" : "text_completion"},
            {"created", meta_.created},
            {"model", meta_.model},
            {"choices", Json::array({std::move(choice)})},
            {"usage", Usage(o)}};
  return body.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace specd::serve::http
