// Chat formatting, hand-written for the Qwen3 template family (no Jinja engine): the renderer
// reproduces the Jinja template's output byte for byte for the inputs it accepts, and refuses
// the inputs it does not model (tool definitions, tool calls, unknown roles).
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "util/status.h"

namespace specd {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" or "tool"
  std::string content;
  // Assistant turns: thinking text kept apart from `content`; when absent, a
  // "<think>…</think>" prefix of `content` is split off the way the template does.
  std::optional<std::string> reasoning_content;
};

struct ChatOptions {
  bool add_generation_prompt = true;
  bool enable_thinking = true;
};

enum class ChatFormat {
  kUnknown,
  kQwen3,  // the hybrid-thinking template of the Qwen3 releases
};

// Which renderer implements `jinja_template` exactly; kUnknown unless it is byte-identical to
// a template this library knows.
ChatFormat DetectChatFormat(std::string_view jinja_template);

// A rendered conversation and which of its bytes came from the messages (content and
// reasoning) rather than from the template: the tokenizer encodes those as text, so a message
// cannot write a control token such as <|im_end|> (docs/server.md, threat model).
struct RenderedChat {
  struct Range {
    size_t begin;
    size_t end;
  };
  std::string text;
  std::vector<Range> content;  // sorted, non-overlapping, non-empty
};

// The Qwen3 template without `tools`. kInvalidArgument for an empty conversation or a role
// the template does not handle.
StatusOr<RenderedChat> RenderQwen3ChatParts(std::span<const ChatMessage> messages,
                                            const ChatOptions& options);
StatusOr<std::string> RenderQwen3Chat(std::span<const ChatMessage> messages,
                                      const ChatOptions& options);

}  // namespace specd
