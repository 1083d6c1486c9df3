// OpenAI request bodies -> PreparedRequest (server/http/openai_request.h): field checks with the
// field named, the defaults OpenAI clients expect, and the chat template's view of tools and
// thinking. Runs on the embedded demo model's tokenizer (Qwen3.5's chat template).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "server/http/openai_request.h"

namespace specd::serve::http {
namespace {

using Json = nlohmann::ordered_json;

class OpenAIRequest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto t = cli::TextCodec::ForModel(SPECD_SOURCE_DIR "/models/demo/target");
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    text_ = t->release();
  }
  static void TearDownTestSuite() { delete text_; }
  ApiContext Ctx() const { return ApiContext{ServeLimits{4096, 4096, 16, {"draft"}}, text_, "specd-demo"}; }
  StatusOr<ApiRequest> Chat(const Json& body) const { return ParseApiRequest(Endpoint::kChat, body, Ctx()); }
  StatusOr<ApiRequest> Completion(const Json& body) const {
    return ParseApiRequest(Endpoint::kCompletion, body, Ctx());
  }
  // The request must fail with `code`, its message naming `fragment`.
  static void ExpectError(const StatusOr<ApiRequest>& r, StatusCode code, const std::string& fragment) {
    ASSERT_FALSE(r.ok()) << "accepted; wanted an error naming " << fragment;
    EXPECT_EQ(r.status().code(), code) << r.status().ToString();
    EXPECT_NE(r.status().message().find(fragment), std::string::npos) << r.status().message();
  }
  static Json Msgs() { return Json::array({{{"role", "user"}, {"content", "def add(a, b):"}}}); }
  static Json Tools() {
    return Json::parse(R"([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])");
  }
  static cli::TextCodec* text_;
};
cli::TextCodec* OpenAIRequest::text_ = nullptr;

TEST_F(OpenAIRequest, UnknownFieldsAreErrorsNamingTheField) {
  ExpectError(Chat({{"messages", Msgs()}, {"bogus", 1}}), StatusCode::kInvalidArgument, "'bogus'");
  ExpectError(Chat({{"messages", Msgs()}, {"prompt", "x"}}), StatusCode::kInvalidArgument, "'prompt'");
  ExpectError(Completion({{"prompt", "x"}, {"messages", Msgs()}}), StatusCode::kInvalidArgument, "'messages'");
  ExpectError(Chat({{"messages", Json::array({{{"role", "user"}, {"content", "x"}, {"colour", "red"}}})}}),
              StatusCode::kInvalidArgument, "messages[0].colour");
  ExpectError(Chat({{"messages", Msgs()}, {"chat_template_kwargs", {{"tools_in_user", true}}}}),
              StatusCode::kInvalidArgument, "chat_template_kwargs.tools_in_user");
}

TEST_F(OpenAIRequest, WrongTypesAreErrorsNamingTheField) {
  ExpectError(Chat({{"messages", Msgs()}, {"max_tokens", "ten"}}), StatusCode::kInvalidArgument, "'max_tokens'");
  ExpectError(Chat({{"messages", Msgs()}, {"max_tokens", 1.5}}), StatusCode::kInvalidArgument, "'max_tokens'");
  ExpectError(Chat({{"messages", Msgs()}, {"max_tokens", 0}}), StatusCode::kInvalidArgument, "'max_tokens'");
  ExpectError(Chat({{"messages", Msgs()}, {"temperature", "hot"}}), StatusCode::kInvalidArgument, "'temperature'");
  ExpectError(Chat({{"messages", Msgs()}, {"stream", "yes"}}), StatusCode::kInvalidArgument, "'stream'");
  ExpectError(Chat({{"messages", "hi"}}), StatusCode::kInvalidArgument, "'messages'");
  ExpectError(Chat({{"messages", Json::array()}}), StatusCode::kInvalidArgument, "'messages'");
  ExpectError(Chat({{"messages", Json::array({{{"role", "user"}, {"content", 5}}})}}), StatusCode::kInvalidArgument,
              "messages[0].content");
  ExpectError(Chat({{"messages", Json::array({{{"role", "wizard"}, {"content", "x"}}})}}),
              StatusCode::kInvalidArgument, "messages[0].role");
  ExpectError(Chat({{"messages", Msgs()}, {"stop", Json::array({1})}}), StatusCode::kInvalidArgument, "'stop'");
  ExpectError(Chat(Json::array()), StatusCode::kInvalidArgument, "JSON object");
  // Ranges are the gRPC API's (server/validate.cpp): one set of rules for both front ends.
  ExpectError(Chat({{"messages", Msgs()}, {"temperature", -1}}), StatusCode::kInvalidArgument, "temperature");
  ExpectError(Chat({{"messages", Msgs()}, {"top_p", 0}}), StatusCode::kInvalidArgument, "top_p");
  ExpectError(Chat({{"messages", Msgs()}, {"max_tokens", 5000}}), StatusCode::kInvalidArgument, "context length");
}

TEST_F(OpenAIRequest, WhatSpecdDoesNotDoIsRefusedNotIgnored) {
  ExpectError(Chat({{"messages", Msgs()}, {"n", 2}}), StatusCode::kInvalidArgument, "'n'");
  ExpectError(Chat({{"messages", Msgs()}, {"logprobs", true}}), StatusCode::kInvalidArgument, "logprobs");
  ExpectError(Chat({{"messages", Msgs()}, {"presence_penalty", 0.5}}), StatusCode::kInvalidArgument, "penalt");
  ExpectError(Chat({{"messages", Msgs()}, {"tools", Tools()}, {"tool_choice", "required"}}),
              StatusCode::kInvalidArgument, "tool_choice");
  ExpectError(Chat({{"messages", Msgs()}, {"stream_options", {{"include_usage", true}}}}),
              StatusCode::kInvalidArgument, "stream_options");
  const Json image = Json::parse(R"([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])");
  ExpectError(Chat({{"messages", image}}), StatusCode::kInvalidArgument, "image_url");
  ExpectError(Completion({{"prompt", "x"}, {"echo", true}}), StatusCode::kInvalidArgument, "echo");
  ExpectError(Completion({{"prompt", Json::array({"a", "b"})}}), StatusCode::kInvalidArgument, "several prompts");
  // Accepted at their defaults.
  EXPECT_TRUE(Chat({{"messages", Msgs()}, {"n", 1}, {"logprobs", false}, {"presence_penalty", 0}}).ok());
}

TEST_F(OpenAIRequest, ModelNameMustBeTheServedOne) {
  ExpectError(Chat({{"model", "gpt-4"}, {"messages", Msgs()}}), StatusCode::kNotFound, "gpt-4");
  auto r = Chat({{"model", "specd-demo"}, {"messages", Msgs()}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->model, "specd-demo");
  EXPECT_TRUE(Chat({{"messages", Msgs()}}).ok()) << "no model: the served one";
}

TEST_F(OpenAIRequest, DefaultsAndSampling) {
  auto chat = Chat({{"messages", Msgs()}});
  ASSERT_TRUE(chat.ok()) << chat.status().ToString();
  const GenerationRequest& g = chat->prepared.gen;
  // Chat: no max_tokens means whatever the context has room for.
  EXPECT_EQ(g.max_tokens, 4096 - static_cast<int>(g.prompt.size()));
  EXPECT_EQ(g.sampling.temperature, 0.f);
  EXPECT_FALSE(chat->stream);
  EXPECT_TRUE(chat->prepared.chat_output.parse);

  auto comp = Completion({{"prompt", "x = 1"}, {"max_completion_tokens", 4}});
  ExpectError(comp, StatusCode::kInvalidArgument, "max_completion_tokens");
  comp = Completion({{"prompt", "x = 1"}, {"top_k", -1}, {"top_p", 0.9}, {"temperature", 0.7}, {"seed", 42},
                     {"stop", "\n\n"}, {"stream", true}, {"stream_options", {{"include_usage", true}}}});
  ASSERT_TRUE(comp.ok()) << comp.status().ToString();
  const GenerationRequest& c = comp->prepared.gen;
  EXPECT_EQ(c.max_tokens, 16) << "OpenAI's completions default";
  EXPECT_EQ(c.sampling.top_k, 0);
  EXPECT_FLOAT_EQ(c.sampling.top_p, 0.9f);
  EXPECT_FLOAT_EQ(c.sampling.temperature, 0.7f);
  EXPECT_EQ(c.sampling.seed, 42u);
  EXPECT_EQ(comp->prepared.text.stop_strings, std::vector<std::string>{"\n\n"});
  EXPECT_TRUE(comp->stream && comp->include_usage);
  EXPECT_FALSE(comp->prepared.chat_output.parse) << "completions return the text as generated";

  auto both = Chat({{"messages", Msgs()}, {"max_completion_tokens", 7}, {"speculative", {{"k", 2}}}});
  ASSERT_TRUE(both.ok()) << both.status().ToString();
  EXPECT_EQ(both->prepared.gen.max_tokens, 7);
  EXPECT_EQ(both->prepared.gen.k, 2);
  ExpectError(Chat({{"messages", Msgs()}, {"speculative", {{"drafter", "mtp"}}}}), StatusCode::kInvalidArgument,
              "drafter");
}

TEST_F(OpenAIRequest, CompletionPromptForms) {
  auto ids = Completion({{"prompt", Json::array({5, 6, 7})}});
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  EXPECT_EQ(ids->prepared.gen.prompt, (std::vector<int32_t>{5, 6, 7}));
  auto nested = Completion({{"prompt", Json::array({Json::array({5, 6})})}});
  ASSERT_TRUE(nested.ok());
  EXPECT_EQ(nested->prepared.gen.prompt, (std::vector<int32_t>{5, 6}));
  auto one = Completion({{"prompt", Json::array({"x = 1"})}});
  auto str = Completion({{"prompt", "x = 1"}});
  ASSERT_TRUE(one.ok() && str.ok());
  EXPECT_EQ(one->prepared.gen.prompt, str->prepared.gen.prompt);
  ExpectError(Completion({{"prompt", Json::array({1, 99999})}}), StatusCode::kInvalidArgument, "vocabulary");
  ExpectError(Completion(Json::object()), StatusCode::kInvalidArgument, "'prompt'");
}

TEST_F(OpenAIRequest, ThinkingDecidesWhereTheCompletionStarts) {
  auto on = Chat({{"messages", Msgs()}});
  auto off = Chat({{"messages", Msgs()}, {"chat_template_kwargs", {{"enable_thinking", false}}}});
  ASSERT_TRUE(on.ok() && off.ok());
  EXPECT_TRUE(on->prepared.chat_output.starts_in_reasoning) << "the prompt ends in \"<think>\\n\"";
  EXPECT_FALSE(off->prepared.chat_output.starts_in_reasoning);
  EXPECT_GT(off->prepared.gen.prompt.size(), on->prepared.gen.prompt.size()) << "the empty think block";
}

TEST_F(OpenAIRequest, ToolsAreRenderedAndTheirCallsParsed) {
  auto plain = Chat({{"messages", Msgs()}});
  auto tools = Chat({{"messages", Msgs()}, {"tools", Tools()}});
  auto none = Chat({{"messages", Msgs()}, {"tools", Tools()}, {"tool_choice", "none"}});
  ASSERT_TRUE(plain.ok() && tools.ok() && none.ok()) << tools.status().ToString() << none.status().ToString();
  EXPECT_GT(tools->prepared.gen.prompt.size(), plain->prepared.gen.prompt.size() + 50);
  EXPECT_TRUE(tools->prepared.chat_output.parse_tool_calls);
  ASSERT_EQ(tools->prepared.chat_output.tools_json.size(), 1u);
  EXPECT_EQ(Json::parse(tools->prepared.chat_output.tools_json[0]), Tools()[0]) << "key order kept";
  EXPECT_EQ(none->prepared.gen.prompt, plain->prepared.gen.prompt) << "tool_choice none: not rendered";
  EXPECT_FALSE(none->prepared.chat_output.parse_tool_calls);
  ExpectError(Chat({{"messages", Msgs()}, {"tools", Json::array({{{"type", "function"}}})}}),
              StatusCode::kInvalidArgument, "tools[0]");
}

TEST_F(OpenAIRequest, HistoryWithToolCallsAndDeveloperRole) {
  const Json call_args_text = Json::parse(R"([
    {"role": "developer", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "weather in "}, {"type": "text", "text": "Oslo?"}]},
    {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
      "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "3 C"}])");
  auto r = Chat({{"messages", call_args_text}, {"tools", Tools()}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  // The same conversation with the system role and one string: the same prompt.
  Json same = call_args_text;
  same[0]["role"] = "system";
  same[1]["content"] = "weather in Oslo?";
  auto s = Chat({{"messages", same}, {"tools", Tools()}});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(r->prepared.gen.prompt, s->prepared.gen.prompt);

  Json bad = call_args_text;
  bad[2]["tool_calls"][0]["function"]["arguments"] = "[1, 2]";
  ExpectError(Chat({{"messages", bad}}), StatusCode::kInvalidArgument, "arguments");
  bad[2]["tool_calls"][0]["function"]["arguments"] = "{not json";
  ExpectError(Chat({{"messages", bad}}), StatusCode::kInvalidArgument, "arguments");
}

}  // namespace
}  // namespace specd::serve::http
