// OpenAI response bodies (server/http/openai_response.h): the reasoning split and tool calls in
// one JSON body and in server-sent events, the same result however the text was chunked, the
// finish reasons, usage with the speculative statistics, and the error object.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "server/http/openai_response.h"

namespace specd::serve::http {
namespace {

using Json = nlohmann::ordered_json;

const char* kTools = R"({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
  "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}})";

// Thinking on, with tools: the model reasons, then calls a tool.
const std::string kCompletion =
    "The user wants weather.\n</think>\n\nLet me check.\n\n<tool_call>\n<function=get_weather>\n"
    "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>";

ChatOutputSpec ToolSpec() { return ChatOutputSpec{true, true, true, {kTools}}; }

RequestOutcome Outcome(FinishReason reason, size_t completion_tokens) {
  RequestOutcome o;
  o.reason = reason;
  o.prompt_tokens = 20;
  o.completion_tokens = completion_tokens;
  o.stats.draft_tokens = 12;
  o.stats.accepted_tokens = 9;
  o.stats.verify_steps = 4;
  return o;
}

ResponseWriter Writer(Endpoint ep, const ChatOutputSpec& spec, bool include_usage = false) {
  auto w = ResponseWriter::Create({ep, "chatcmpl-1", "specd-demo", 1700000000, include_usage}, spec);
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  return std::move(*w);
}

struct Streamed {
  std::string reasoning, content, finish;
  std::vector<Json> calls;
  Json usage;
  bool done = false;
  int role_chunks = 0;
};

// Parses SSE frames the way an OpenAI client does.
void ReadSse(const std::string& sse, Streamed* s) {
  size_t pos = 0;
  while (pos < sse.size()) {
    const size_t end = sse.find("\n\n", pos);
    ASSERT_NE(end, std::string::npos) << "an event not ended by a blank line";
    const std::string ev = sse.substr(pos, end - pos);
    pos = end + 2;
    ASSERT_EQ(ev.rfind("data: ", 0), 0u) << ev;
    const std::string data = ev.substr(6);
    ASSERT_FALSE(s->done) << "an event after [DONE]";
    if (data == "[DONE]") {
      s->done = true;
      continue;
    }
    const Json j = Json::parse(data);
    if (j.contains("usage")) s->usage = j["usage"];
    for (const Json& c : j["choices"]) {
      const Json& d = c.contains("delta") ? c["delta"] : Json::object();
      if (d.contains("role")) ++s->role_chunks;
      if (d.contains("reasoning_content")) s->reasoning += d["reasoning_content"].get<std::string>();
      if (d.contains("content") && d["content"].is_string()) s->content += d["content"].get<std::string>();
      if (c.contains("text")) s->content += c["text"].get<std::string>();
      if (d.contains("tool_calls")) {
        for (const Json& t : d["tool_calls"]) s->calls.push_back(t);
      }
      if (!c["finish_reason"].is_null()) s->finish = c["finish_reason"].get<std::string>();
    }
  }
}

TEST(OpenAIResponse, OneBodyWithReasoningAndToolCalls) {
  ResponseWriter w = Writer(Endpoint::kChat, ToolSpec());
  w.Add(kCompletion.substr(0, 30));
  w.Add(kCompletion.substr(30));
  const Json body = Json::parse(w.Body(Outcome(FinishReason::kEos, 40)));
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["id"], "chatcmpl-1");
  const Json& choice = body["choices"][0];
  EXPECT_EQ(choice["finish_reason"], "tool_calls");
  const Json& msg = choice["message"];
  EXPECT_EQ(msg["role"], "assistant");
  EXPECT_EQ(msg["reasoning_content"], "The user wants weather.");
  EXPECT_EQ(msg["content"], "Let me check.\n\n");
  ASSERT_EQ(msg["tool_calls"].size(), 1u);
  const Json& call = msg["tool_calls"][0];
  EXPECT_EQ(call["type"], "function");
  EXPECT_EQ(call["id"].get<std::string>().rfind("call_", 0), 0u);
  EXPECT_EQ(call["function"]["name"], "get_weather");
  // Arguments are JSON text, typed by the tool's schema: days is an integer.
  EXPECT_EQ(Json::parse(call["function"]["arguments"].get<std::string>()), Json::parse(R"({"city":"Paris","days":3})"));
  const Json& u = body["usage"];
  EXPECT_EQ(u["prompt_tokens"], 20);
  EXPECT_EQ(u["completion_tokens"], 40);
  EXPECT_EQ(u["total_tokens"], 60);
  EXPECT_EQ(u["speculative"]["draft_tokens"], 12);
  EXPECT_EQ(u["speculative"]["accepted_tokens"], 9);
  EXPECT_DOUBLE_EQ(u["speculative"]["acceptance_rate"].get<double>(), 0.75);
}

TEST(OpenAIResponse, OnlyToolCallsGiveNullContent) {
  ResponseWriter w = Writer(Endpoint::kChat, ChatOutputSpec{true, false, true, {kTools}});
  w.Add("<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n</function>\n</tool_call>");
  const Json body = Json::parse(w.Body(Outcome(FinishReason::kEos, 10)));
  EXPECT_TRUE(body["choices"][0]["message"]["content"].is_null());
  EXPECT_FALSE(body["choices"][0]["message"].contains("reasoning_content"));
}

TEST(OpenAIResponse, StreamedEventsDoNotDependOnChunking) {
  // The whole completion in one piece, then split at every byte: the same reasoning, content,
  // tool calls and finish reason every time.
  auto run = [](const std::vector<std::string>& pieces) {
    ResponseWriter w = Writer(Endpoint::kChat, ToolSpec(), /*include_usage=*/true);
    std::string sse = w.StreamStart();
    for (const std::string& p : pieces) sse += w.StreamText(p);
    sse += w.StreamEnd(Outcome(FinishReason::kEos, 40));
    Streamed s;
    ReadSse(sse, &s);
    return s;
  };
  const Streamed whole = run({kCompletion});
  EXPECT_EQ(whole.role_chunks, 1);
  EXPECT_EQ(whole.reasoning, "The user wants weather.");
  EXPECT_EQ(whole.content, "Let me check.\n\n");
  ASSERT_EQ(whole.calls.size(), 1u);
  EXPECT_EQ(whole.calls[0]["index"], 0);
  EXPECT_EQ(whole.calls[0]["function"]["name"], "get_weather");
  EXPECT_EQ(whole.finish, "tool_calls");
  EXPECT_TRUE(whole.done);
  EXPECT_EQ(whole.usage["completion_tokens"], 40);
  for (size_t cut = 0; cut <= kCompletion.size(); ++cut) {
    const Streamed s = run({kCompletion.substr(0, cut), kCompletion.substr(cut)});
    ASSERT_EQ(s.reasoning, whole.reasoning) << "cut at " << cut;
    ASSERT_EQ(s.content, whole.content) << "cut at " << cut;
    ASSERT_EQ(s.calls.size(), 1u) << "cut at " << cut;
    ASSERT_EQ(s.calls[0]["function"], whole.calls[0]["function"]) << "cut at " << cut;
    ASSERT_EQ(s.finish, whole.finish);
  }
  std::vector<std::string> bytes;
  for (char c : kCompletion) bytes.emplace_back(1, c);
  const Streamed b = run(bytes);
  EXPECT_EQ(b.reasoning, whole.reasoning);
  EXPECT_EQ(b.content, whole.content);
  EXPECT_EQ(b.calls.size(), 1u);
}

TEST(OpenAIResponse, SeveralToolCallsAreIndexed) {
  const std::string two =
      "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n</function>\n</tool_call>\n"
      "<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n</function>\n</tool_call>";
  ResponseWriter w = Writer(Endpoint::kChat, ChatOutputSpec{true, false, true, {kTools}});
  std::string sse = w.StreamStart() + w.StreamText(two) + w.StreamEnd(Outcome(FinishReason::kEos, 30));
  Streamed s;
  ReadSse(sse, &s);
  ASSERT_EQ(s.calls.size(), 2u);
  EXPECT_EQ(s.calls[0]["index"], 0);
  EXPECT_EQ(s.calls[1]["index"], 1);
  EXPECT_NE(s.calls[0]["id"], s.calls[1]["id"]);
  EXPECT_EQ(Json::parse(s.calls[1]["function"]["arguments"].get<std::string>())["city"], "Rome");
}

TEST(OpenAIResponse, MalformedToolCallIsContentAndLengthIsLength) {
  const std::string broken = "<tool_call>\n<function=get_weather>\n<parameter=city>\nOs";  // cut by max_tokens
  ResponseWriter w = Writer(Endpoint::kChat, ChatOutputSpec{true, false, true, {kTools}});
  w.Add(broken);
  const Json body = Json::parse(w.Body(Outcome(FinishReason::kLength, 16)));
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["choices"][0]["message"]["content"], broken);
  EXPECT_FALSE(body["choices"][0]["message"].contains("tool_calls"));
}

TEST(OpenAIResponse, WithoutToolsTheTagIsText) {
  ResponseWriter w = Writer(Endpoint::kChat, ChatOutputSpec{true, false, false, {}});
  const std::string text = "<tool_call>\n<function=f>\n</function>\n</tool_call>";
  w.Add(text);
  const Json body = Json::parse(w.Body(Outcome(FinishReason::kEos, 9)));
  EXPECT_EQ(body["choices"][0]["message"]["content"], text);
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
}

TEST(OpenAIResponse, CompletionsReturnTheTextAsGenerated) {
  ResponseWriter w = Writer(Endpoint::kCompletion, ChatOutputSpec{});
  const std::string text = "a\n</think>\n<tool_call>x";
  std::string sse = w.StreamStart() + w.StreamText(text.substr(0, 5)) + w.StreamText(text.substr(5));
  RequestOutcome o = Outcome(FinishReason::kStop, 7);
  o.stop_string = "END";
  sse += w.StreamEnd(o);
  Streamed s;
  ReadSse(sse, &s);
  EXPECT_EQ(s.content, text);
  EXPECT_EQ(s.role_chunks, 0);
  EXPECT_EQ(s.finish, "stop");
  EXPECT_TRUE(s.usage.is_null()) << "no include_usage: no usage chunk";
  EXPECT_NE(sse.find("\"object\":\"text_completion\""), std::string::npos);
  EXPECT_NE(sse.find("\"stop_reason\":\"END\""), std::string::npos);

  ResponseWriter one = Writer(Endpoint::kCompletion, ChatOutputSpec{});
  one.Add(text);
  const Json body = Json::parse(one.Body(Outcome(FinishReason::kLength, 7)));
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["choices"][0]["text"], text);
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
}

TEST(OpenAIResponse, ErrorsInOpenAIsFormat) {
  EXPECT_EQ(HttpStatusOf(InvalidArgument("x")), 400);
  EXPECT_EQ(HttpStatusOf(NotFound("x")), 404);
  EXPECT_EQ(HttpStatusOf(AlreadyExists("x")), 409);
  EXPECT_EQ(HttpStatusOf(Status(StatusCode::kResourceExhausted, "queue full")), 429);
  EXPECT_EQ(HttpStatusOf(Unavailable("draining")), 503);
  EXPECT_EQ(HttpStatusOf(Status(StatusCode::kInternal, "x")), 500);
  const Json e = Json::parse(ErrorBody(429, "the queue is full"));
  EXPECT_EQ(e["error"]["message"], "the queue is full");
  EXPECT_EQ(e["error"]["type"], "rate_limit_error");
  EXPECT_TRUE(e["error"]["code"].is_null()) << "a string or null in OpenAI's API";
  EXPECT_TRUE(e["error"]["param"].is_null());
  const std::string sse = ResponseWriter::StreamError(Status(StatusCode::kInternal, "engine step failed"));
  EXPECT_EQ(sse.rfind("data: {\"error\":", 0), 0u) << sse;
  EXPECT_TRUE(sse.ends_with("\n\ndata: [DONE]\n\n")) << sse;
}

TEST(OpenAIResponse, BadToolsFailAtCreate) {
  auto w = ResponseWriter::Create({Endpoint::kChat, "x", "m", 0, false}, ChatOutputSpec{true, false, true, {"[1]"}});
  EXPECT_FALSE(w.ok());
}

}  // namespace
}  // namespace specd::serve::http
