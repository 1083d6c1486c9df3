// Splits a streamed Qwen3.5 chat completion into reasoning, content and OpenAI tool calls.
//
// The server feeds the generated text in chunks of any size (speculative decoding delivers several
// tokens per step, so a chunk may end inside a tag or inside a UTF-8 character). The parser gives
// the same result for every chunking of the same text: the concatenated reasoning, the concatenated
// content, the tool calls and their order relative to the content do not depend on where the chunks
// were cut. Only a tail that could still grow into a tag it watches for is held back.
//
// The format (thinking on, the prompt ends with "<think>\n"):
//   reasoning...\n</think>\n\ncontent...\n\n<tool_call>\n<function=NAME>\n<parameter=P>\nvalue\n</parameter>\n
//   </function>\n</tool_call>\n<tool_call>...</tool_call>
//
// Semantics:
// - Reasoning. With starts_in_reasoning, the completion starts inside the reasoning. Otherwise a
//   completion that starts with "<think>" (exactly at byte 0, no leading whitespace) opens the
//   reasoning; the tag is dropped, and so are the newlines right after it (the template writes
//   "<think>\n"). The reasoning ends at the first "</think>": the tag, up to 3 newlines right before
//   it and all the newlines right after it are dropped. (The count before the tag is bounded so
//   that the hold-back stays bounded; the format writes one.) A later "</think>" or "<think>" is
//   ordinary content. If the completion ends inside the reasoning, all of it was reasoning
//   (including a held-back "</thi" or newlines). Tool calls are not parsed inside the reasoning.
// - Content: everything else outside tool-call blocks, byte for byte (whitespace around and between
//   tool calls included).
// - Tool calls (only with parse_tool_calls; otherwise "<tool_call>" is content): a block runs from
//   "<tool_call>" to the first "</tool_call>" after it (a parameter value cannot contain
//   "</tool_call>"). It must hold exactly one "<function=NAME>" ... "</function>" with zero or more
//   "<parameter=P>" VALUE "</parameter>" inside, and nothing but ASCII whitespace between the
//   elements. NAME and P are non-empty and contain no whitespace, '<' or '>'. VALUE is the text
//   between the tags with one leading and one trailing "\n" removed (when present).
//   Arguments are a compact JSON object, keys in the order they appeared (a repeated parameter
//   keeps its first position and takes the last value), non-ASCII kept as raw UTF-8 (invalid UTF-8
//   becomes U+FFFD). VALUE is converted by the type that the tool's JSON schema gives P
//   (function.parameters.properties.P: "type" as a string, or a list / "anyOf" / "oneOf" of which
//   the first non-"null" type counts):
//     "null"             -> null, whatever the type (the parameter must be in the schema)
//     string             -> the text as is
//     integer            -> a JSON integer if the text is one (optional '-', digits, fits 64 bits)
//     number             -> an integer if written as one, else a finite double if the whole text
//                           parses as one ("1.5", "1e3", ".5")
//     boolean            -> true / false for "true" / "false" in any case
//     object / array     -> the parsed JSON if the text is JSON of that kind (key order kept,
//                           nesting depth <= 64)
//   For the non-string types, surrounding ASCII whitespace is ignored while parsing. Whatever does
//   not convert stays a JSON string of the text as is; so does every parameter of an unknown
//   function, a parameter missing from the schema, or one without a usable type. An unknown
//   function name is still reported as a tool call.
// - A block that fails to parse (text outside the elements, a "</tool_call>" before "</function>", a
//   parameter without "</parameter>", a block still open at Finish) is content, exactly as
//   generated, tags included. A "<tool_call>" that is not followed by optional whitespace and
//   "<function=" is content as soon as that is certain, and parsing goes on right after the tag
//   (so prose that mentions the tag is not held back to the end). Parsing never fails the request.
// - Held back: in reasoning, a proper prefix of "</think>" after up to 3 newlines (<= 10 bytes); in
//   content, a proper prefix of "<tool_call>" (<= 10 bytes); at the start of a completion that may
//   open with "<think>", a proper prefix of it; anywhere, an incomplete UTF-8 character at the end
//   (<= 3 bytes, never together with a tag prefix), so that no delta cuts a character in two. Inside
//   an open tool-call block, everything is held until "</tool_call>" (or Finish).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "util/status.h"

namespace specd {

struct ParsedToolCall {
  std::string name;
  std::string arguments_json;  // a JSON object, compact, keys in the order they appeared
  bool operator==(const ParsedToolCall&) const = default;
};

struct ChatOutputDelta {
  std::string reasoning;                   // new reasoning text
  std::string content;                     // new content text
  std::vector<ParsedToolCall> tool_calls;  // tool calls completed by this feed, in order
  // Where each tool call falls within this delta's content: tool_calls[i] came right after the first
  // tool_call_content_offsets[i] bytes of `content` (reasoning always comes before both). OpenAI
  // messages do not order content against tool calls, so a server may ignore it; it keeps the
  // event order observable (and testable) when one feed completes a call and goes on with content.
  std::vector<size_t> tool_call_content_offsets;
  bool empty() const { return reasoning.empty() && content.empty() && tool_calls.empty(); }
};

struct ChatOutputOptions {
  bool starts_in_reasoning = false;     // the prompt ended inside "<think>" (thinking on)
  bool parse_tool_calls = false;        // the request declared tools (and tool_choice != "none")
  std::vector<std::string> tools_json;  // the request's OpenAI tools (JSON objects): parameter types for conversion
};

struct ToolSchemas;  // the parameter types of the declared tools (chat_output_parser.cpp)

class ChatOutputParser {
 public:
  // Fails (kInvalidArgument) only when tools_json is not valid tool JSON: each entry must be a JSON
  // object with an object "function" holding a non-empty string "name"; "function.parameters" and
  // its "properties", where present, must be objects.
  static StatusOr<ChatOutputParser> Create(ChatOutputOptions opt);

  ChatOutputDelta Feed(std::string_view text);  // any chunk, possibly splitting a tag or a UTF-8 char
  ChatOutputDelta Finish();  // end of the completion: flush what was held back (once; the parser is done then)
  // Feed(text) then Finish() as one delta (the last chunk of a completion).
  ChatOutputDelta FeedLast(std::string_view text);

  size_t held_bytes() const { return buf_.size(); }  // not yet emitted (tests check the bound)

 private:
  enum class Mode { kStart, kReasoning, kContent, kToolCall };

  ChatOutputParser() = default;
  void Process(ChatOutputDelta& out, bool final);
  bool StepStart(bool final);
  bool StepReasoning(ChatOutputDelta& out, bool final);
  bool StepContent(ChatOutputDelta& out, bool final);
  bool StepToolCall(ChatOutputDelta& out, bool final);

  bool parse_tool_calls_ = false;
  std::shared_ptr<const ToolSchemas> tools_;  // shared: read-only, and the parser is copied and moved freely
  Mode mode_ = Mode::kStart;
  bool skip_newlines_ = false;  // drop '\n' until other text (right after "<think>" / "</think>")
  std::string buf_;             // fed but not yet emitted; in kToolCall, the block after "<tool_call>"
  size_t block_scanned_ = 0;    // in kToolCall: buf_ before this holds no "</tool_call>" start
};

}  // namespace specd
