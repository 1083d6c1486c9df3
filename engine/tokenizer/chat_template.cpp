#include "tokenizer/chat_template.h"

#include <cstdint>

#include "tokenizer/py_str.h"

namespace specd {
namespace {

// FNV-1a of the Qwen3 chat template (tokenizer_config.json of the Qwen3 releases, 4116 bytes).
// Only that exact text is claimed: a Jinja template that differs anywhere may render differently.
constexpr uint64_t kQwen3TemplateFnv = 0x2bfdb7aa9754484eULL;
constexpr size_t kQwen3TemplateSize = 4116;
// FNV-1a of the Qwen3.5 chat template (chat_template.jinja of Qwen3.5-35B-A3B, the chat_template
// of Qwen3.5-27B's tokenizer_config.json; tests/tokenizer/data/qwen35_chat_template.jinja), 7756
// bytes without a trailing newline.
constexpr uint64_t kQwen35TemplateFnv = 0xf07c510f47fbaca0ULL;
constexpr size_t kQwen35TemplateSize = 7756;

uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

using py_str::AfterLast;
using py_str::BeforeFirst;
using py_str::LStrip;
using py_str::RStrip;
using py_str::Strip;

bool IsToolResponse(std::string_view s) {
  return s.starts_with("<tool_response>") && s.ends_with("</tool_response>");
}

}  // namespace

ChatFormat DetectChatFormat(std::string_view jinja_template) {
  if (jinja_template.size() == kQwen3TemplateSize && Fnv1a(jinja_template) == kQwen3TemplateFnv) {
    return ChatFormat::kQwen3;
  }
  std::string_view t = jinja_template;
  for (int i = 0; i < 2 && t.ends_with('\n'); ++i) t.remove_suffix(1);
  if (t.size() == kQwen35TemplateSize && Fnv1a(t) == kQwen35TemplateFnv) return ChatFormat::kQwen35;
  return ChatFormat::kUnknown;
}

StatusOr<RenderedChat> RenderQwen3ChatParts(std::span<const ChatMessage> messages,
                                            const ChatOptions& options) {
  if (messages.empty()) return InvalidArgument("chat: no messages");
  // The Qwen3 template would print tools too, but this renderer was never checked against it.
  bool tools = !options.tools_json.empty();
  for (const ChatMessage& m : messages) tools = tools || !m.tool_calls.empty();
  if (tools) return InvalidArgument("the Qwen3 template renderer does not support tools");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& r = messages[i].role;
    // The template silently drops other roles; refusing them is kinder than losing a turn.
    if (r != "system" && r != "user" && r != "assistant" && r != "tool") {
      return InvalidArgument("chat: message {} has unsupported role '{}'", i, r);
    }
  }
  RenderedChat chat;
  std::string& out = chat.text;
  // Text from a message (as opposed to the template's own markup) is recorded as content.
  auto content_of = [&](std::string_view s) {
    if (s.empty()) return;
    chat.content.push_back({out.size(), out.size() + s.size()});
    out += s;
  };
  if (messages[0].role == "system") {
    out += "<|im_start|>system\n";
    content_of(messages[0].content);
    out += "<|im_end|>\n";
  }
  // The last user turn that is a real query (not a wrapped tool response): assistant turns
  // after it keep their reasoning, earlier ones lose it.
  const size_t n = messages.size();
  size_t last_query = n - 1;
  for (size_t k = n; k-- > 0;) {
    if (messages[k].role == "user" && !IsToolResponse(messages[k].content)) {
      last_query = k;
      break;
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const ChatMessage& m = messages[i];
    const bool last = i + 1 == n;
    if (m.role == "user" || (m.role == "system" && i != 0)) {
      out += "<|im_start|>" + m.role + "\n";
      content_of(m.content);
      out += "<|im_end|>\n";
    } else if (m.role == "assistant") {
      std::string_view content = m.content;
      std::string_view reasoning;
      if (m.reasoning_content.has_value()) {
        reasoning = *m.reasoning_content;
      } else if (m.content.find("</think>") != std::string::npos) {
        content = LStrip(AfterLast(m.content, "</think>"), '\n');
        reasoning = LStrip(AfterLast(RStrip(BeforeFirst(m.content, "</think>"), '\n'), "<think>"), '\n');
      }
      out += "<|im_start|>assistant\n";
      if (i > last_query && (last || !reasoning.empty())) {
        out += "<think>\n";
        content_of(Strip(reasoning, '\n'));
        out += "\n</think>\n\n";
        content_of(LStrip(content, '\n'));
      } else {
        content_of(content);
      }
      out += "<|im_end|>\n";
    } else if (m.role == "tool") {
      if (i == 0 || messages[i - 1].role != "tool") out += "<|im_start|>user";
      out += "\n<tool_response>\n";
      content_of(m.content);
      out += "\n</tool_response>";
      if (last || messages[i + 1].role != "tool") out += "<|im_end|>\n";
    }
  }
  if (options.add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (!options.enable_thinking) out += "<think>\n\n</think>\n\n";
  }
  return chat;
}

StatusOr<std::string> RenderQwen3Chat(std::span<const ChatMessage> messages, const ChatOptions& options) {
  SPECD_ASSIGN_OR_RETURN(RenderedChat chat, RenderQwen3ChatParts(messages, options));
  return std::move(chat.text);
}

}  // namespace specd
