// The Qwen3.5 chat template (tests/tokenizer/data/qwen35_chat_template.jinja), hand-written:
// tools in the system turn, assistant tool calls as <function=...> XML, tool responses grouped
// into user turns, reasoning kept after the last real user query. Byte-identical to jinja2 set
// up like transformers' apply_chat_template for string content (tests/tokenizer/
// gen_qwen35_chat_ref.py); image / video content parts are not modelled (the server refuses them).
#pragma once

#include <span>

#include "tokenizer/chat_template.h"
#include "util/status.h"

namespace specd {

// kInvalidArgument:
// - with the template's own message where it raises: "No messages provided.", "No user query
//   found in messages.", "System message must be at the beginning.", "Unexpected message role.";
// - for what Python could not have received or the template would silently drop: text that is
//   not UTF-8, a tools_json / arguments_json entry that is not a JSON object (naming which),
//   tool_calls or reasoning_content on a message that is not an assistant turn.
// RenderedChat::content covers every byte taken from the request: message content, reasoning,
// each tool's JSON, tool-call names, argument names and values.
StatusOr<RenderedChat> RenderQwen35ChatParts(std::span<const ChatMessage> messages, const ChatOptions& options);

}  // namespace specd
