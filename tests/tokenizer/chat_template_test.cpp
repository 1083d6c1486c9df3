// Chat rendering against the Qwen3 Jinja template's own output (chat_ref.json from
// transformers, qwen3_chat_extra_ref.json from jinja2 + HF tokenizers).
#include <gtest/gtest.h>

#include "fixtures.h"

namespace specd {
namespace {

using testing::Qwen3;
using testing::ReadJson;

std::vector<ChatMessage> Messages(const nlohmann::json& arr) {
  std::vector<ChatMessage> out;
  for (const auto& m : arr) {
    ChatMessage msg{m["role"], m["content"], std::nullopt};
    if (m.contains("reasoning_content")) msg.reasoning_content = m["reasoning_content"].get<std::string>();
    out.push_back(std::move(msg));
  }
  return out;
}

void CheckCases(const nlohmann::json& cases) {
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    const ChatOptions opt{c["add_generation_prompt"], c["enable_thinking"]};
    auto rendered = Qwen3().ApplyChatTemplate(Messages(c["messages"]), opt);
    ASSERT_TRUE(rendered.ok()) << "case " << i << ": " << rendered.status().ToString();
    EXPECT_EQ(*rendered, c["rendered"].get<std::string>()) << "case " << i;
    auto ids = Qwen3().Encode(*rendered);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*ids, c["ids"].get<std::vector<int32_t>>()) << "case " << i;
  }
}

TEST(ChatTemplate, QwenTemplateIsRecognised) {
  EXPECT_EQ(Qwen3().chat_format(), ChatFormat::kQwen3);
  std::string changed = Qwen3().chat_template();
  changed.replace(changed.find("<think>\\n\\n</think>"), 7, "<THINK>");
  EXPECT_EQ(DetectChatFormat(changed), ChatFormat::kUnknown);
  EXPECT_EQ(DetectChatFormat(""), ChatFormat::kUnknown);
}

TEST(ChatTemplate, All16ReferenceRendersAndIds) {
  const auto cases = ReadJson(testing::Qwen3Dir() + "/chat_ref.json");
  ASSERT_EQ(cases.size(), 16u);
  CheckCases(cases);
}

TEST(ChatTemplate, ReasoningToolAndSystemTurnsMatchJinja) {
  const auto cases = ReadJson(testing::TestData("qwen3_chat_extra_ref.json"));
  ASSERT_EQ(cases.size(), 56u);
  CheckCases(cases);
}

TEST(ChatTemplate, RejectsWhatTheRendererDoesNotModel) {
  const ChatOptions opt;
  EXPECT_EQ(RenderQwen3Chat({}, opt).status().code(), StatusCode::kInvalidArgument);
  const std::vector<ChatMessage> dev = {{"user", "hi", {}}, {"developer", "x", {}}};
  auto r = RenderQwen3Chat(dev, opt);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("developer"), std::string::npos);
}

TEST(ChatTemplate, TokenizerWithoutTemplateRefusesToRender) {
  auto tok = Tokenizer::Load(testing::Qwen3Dir() + "/tokenizer.json");  // file: no config
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ((*tok)->chat_format(), ChatFormat::kUnknown);
  const std::vector<ChatMessage> msgs = {{"user", "hi", {}}};
  EXPECT_EQ((*tok)->ApplyChatTemplate(msgs, {}).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ((*tok)->eos_token_id(), std::nullopt);
}

}  // namespace
}  // namespace specd
