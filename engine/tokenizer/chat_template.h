// Chat formatting, hand-written for the Qwen3 and Qwen3.5 templates (no Jinja engine): each
// renderer reproduces its Jinja template's output byte for byte for the inputs it accepts, and
// refuses the inputs it does not model (e.g. tools for Qwen3) rather than dropping them.
// The Qwen3.5 renderer is in chat_template_qwen35.h.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "util/status.h"

namespace specd {

// A function call made by an assistant turn (OpenAI's tool_calls[i].function).
struct ChatToolCall {
  std::string name;
  // A JSON object, any formatting: the template re-serializes it the way Python does after
  // json.loads (key order kept). Anything but an object is refused.
  std::string arguments_json;
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" or "tool"
  std::string content;
  // Assistant turns: thinking text kept apart from `content`; when absent, a
  // "<think>…</think>" prefix of `content` is split off the way the template does.
  std::optional<std::string> reasoning_content;
  std::vector<ChatToolCall> tool_calls;  // assistant turns (Qwen3.5 only)
};

struct ChatOptions {
  bool add_generation_prompt = true;
  bool enable_thinking = true;
  // OpenAI tool objects ({"type":"function","function":{...}}), each a JSON object; printed in
  // the system turn re-serialized like Python's json.dumps, key order kept (Qwen3.5 only).
  std::vector<std::string> tools_json;
};

enum class ChatFormat {
  kUnknown,
  kQwen3,   // the hybrid-thinking template of the Qwen3 releases
  kQwen35,  // the Qwen3.5 template (tools as <function=...> XML, always-on think blocks)
};

// Which renderer implements `jinja_template` exactly; kUnknown unless it is byte-identical to
// a template this library knows. The Qwen3.5 text may be followed by one or two newlines:
// chat_template.jinja files end with one, tokenizer_config.json strings do not, and Jinja
// (keep_trailing_newline=False, trim_blocks) outputs neither; a third would be output.
ChatFormat DetectChatFormat(std::string_view jinja_template);

// A rendered conversation and which of its bytes came from the request (content, reasoning,
// tool definitions, tool-call names and arguments) rather than from the template: the
// tokenizer encodes those as text, so a request cannot write a control token such as
// <|im_end|> (docs/server.md, threat model).
struct RenderedChat {
  struct Range {
    size_t begin;
    size_t end;
  };
  std::string text;
  std::vector<Range> content;  // sorted, non-overlapping, non-empty
};

// The Qwen3 template without `tools`. kInvalidArgument for an empty conversation, a role the
// template does not handle, or any tools / tool_calls (not modelled: refused, never dropped).
StatusOr<RenderedChat> RenderQwen3ChatParts(std::span<const ChatMessage> messages,
                                            const ChatOptions& options);
StatusOr<std::string> RenderQwen3Chat(std::span<const ChatMessage> messages,
                                      const ChatOptions& options);

}  // namespace specd
