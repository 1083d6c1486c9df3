#include "tokenizer/chat_template_qwen35.h"

#include "tokenizer/py_str.h"

#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/python_json.h"
#include "tokenizer/utf8.h"

namespace specd {
namespace {

using python_json::Value;

// The template's text after the tool list, verbatim.
constexpr std::string_view kToolInstructions =
    "\n"
    "\n"
    "If you choose to call a function ONLY reply in the following format with NO suffix:\n"
    "\n"
    "<tool_call>\n"
    "<function=example_function_name>\n"
    "<parameter=example_parameter_1>\n"
    "value_1\n"
    "</parameter>\n"
    "<parameter=example_parameter_2>\n"
    "This is the value for the second parameter\n"
    "that can span\n"
    "multiple lines\n"
    "</parameter>\n"
    "</function>\n"
    "</tool_call>\n"
    "\n"
    "<IMPORTANT>\n"
    "Reminder:\n"
    "- Function calls MUST follow the specified format: an inner <function=...></function> block must be nested "
    "within <tool_call></tool_call> XML tags\n"
    "- Required parameters MUST be specified\n"
    "- You may provide optional reasoning for your function call in natural language BEFORE the function call, "
    "but NOT after\n"
    "- If there is no function call available, answer the question like normal with your current knowledge and do "
    "not tell the user about function calls\n"
    "</IMPORTANT>";

// Python's str.isspace(), which str.strip() (Jinja's |trim) strips: Unicode White_Space plus
// U+001C..U+001F (bidirectional class B / S).
bool PyIsSpace(char32_t c) { return utf8::IsWhiteSpace(c) || (c >= 0x1C && c <= 0x1F); }

// Python's str.strip() on valid UTF-8.
std::string_view PyStrip(std::string_view s) {
  size_t len = 0;
  while (!s.empty() && PyIsSpace(utf8::DecodeValid(s, 0, &len))) s.remove_prefix(len);
  while (!s.empty()) {
    size_t p = s.size() - 1;
    while (p > 0 && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) --p;
    if (!PyIsSpace(utf8::DecodeValid(s, p, &len))) break;
    s.remove_suffix(s.size() - p);
  }
  return s;
}

using py_str::AfterLast;
using py_str::BeforeFirst;
using py_str::LStrip;
using py_str::RStrip;

Status CheckUtf8(std::string_view s, size_t message, std::string_view what) {
  if (auto bad = utf8::FirstInvalidByte(s)) {
    return InvalidArgument("message {}: {} is not valid UTF-8 (byte offset {})", message, what, *bad);
  }
  return Status::Ok();
}

// A JSON object given as text, parsed as json.loads would; `what` names it in errors.
StatusOr<Value> ParseObject(std::string_view json, const std::string& what) {
  auto v = python_json::Parse(json);
  if (!v.ok()) return InvalidArgument("{} is not valid JSON: {}", what, v.status().message());
  if (v->kind != Value::Kind::kObject) return InvalidArgument("{} is not a JSON object", what);
  return std::move(v).value();
}

// Everything the template gets from the request, checked and parsed before anything is printed.
struct Parsed {
  std::vector<Value> tools;
  std::vector<std::vector<Value>> arguments;  // per message, per tool call
};

StatusOr<Parsed> ParseRequest(std::span<const ChatMessage> messages, const ChatOptions& options) {
  Parsed p;
  for (size_t t = 0; t < options.tools_json.size(); ++t) {
    SPECD_ASSIGN_OR_RETURN(Value v, ParseObject(options.tools_json[t], fmt::format("tools_json[{}]", t)));
    p.tools.push_back(std::move(v));
  }
  p.arguments.resize(messages.size());
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    SPECD_RETURN_IF_ERROR(CheckUtf8(m.content, i, "content"));
    if (m.reasoning_content) SPECD_RETURN_IF_ERROR(CheckUtf8(*m.reasoning_content, i, "reasoning_content"));
    // The template ignores these outside assistant turns; losing them silently would be worse.
    if (m.role != "assistant" && (!m.tool_calls.empty() || m.reasoning_content)) {
      return InvalidArgument(
          "message {}: tool_calls and reasoning_content are only rendered for assistant turns, "
          "not for role '{}'",
          i, m.role);
    }
    for (size_t c = 0; c < m.tool_calls.size(); ++c) {
      SPECD_RETURN_IF_ERROR(CheckUtf8(m.tool_calls[c].name, i, fmt::format("tool_calls[{}].name", c)));
      SPECD_ASSIGN_OR_RETURN(Value args, ParseObject(m.tool_calls[c].arguments_json,
                                                     fmt::format("message {}: tool_calls[{}].arguments_json", i, c)));
      p.arguments[i].push_back(std::move(args));
    }
  }
  return p;
}

bool IsToolResponse(std::string_view s) { return s.starts_with("<tool_response>") && s.ends_with("</tool_response>"); }

}  // namespace

StatusOr<RenderedChat> RenderQwen35ChatParts(std::span<const ChatMessage> messages, const ChatOptions& options) {
  if (messages.empty()) return InvalidArgument("No messages provided.");
  SPECD_ASSIGN_OR_RETURN(Parsed req, ParseRequest(messages, options));
  RenderedChat chat;
  std::string& out = chat.text;
  // Bytes from the request (as opposed to the template's own markup) are recorded as content.
  auto content_of = [&](std::string_view s) {
    if (s.empty()) return;
    chat.content.push_back({out.size(), out.size() + s.size()});
    out += s;
  };
  const bool system_first = messages[0].role == "system";
  if (!req.tools.empty()) {
    out += "<|im_start|>system\n# Tools\n\nYou have access to the following functions:\n\n<tools>";
    for (const Value& tool : req.tools) {
      out += '\n';
      content_of(python_json::Dumps(tool));
    }
    out += "\n</tools>";
    out += kToolInstructions;
    if (system_first) {
      const std::string_view system = PyStrip(messages[0].content);
      if (!system.empty()) {
        out += "\n\n";
        content_of(system);
      }
    }
    out += "<|im_end|>\n";
  } else if (system_first) {
    out += "<|im_start|>system\n";
    content_of(PyStrip(messages[0].content));
    out += "<|im_end|>\n";
  }

  // The last user turn that is a real query, not a tool response the client wrapped in a user
  // turn: assistant turns after it show their reasoning, earlier ones do not.
  const size_t n = messages.size();
  size_t last_query = n;
  for (size_t k = n; k-- > 0;) {
    if (messages[k].role == "user" && !IsToolResponse(PyStrip(messages[k].content))) {
      last_query = k;
      break;
    }
  }
  if (last_query == n) return InvalidArgument("No user query found in messages.");

  for (size_t i = 0; i < n; ++i) {
    const ChatMessage& m = messages[i];
    std::string_view content = PyStrip(m.content);
    if (m.role == "system") {
      if (i != 0) return InvalidArgument("System message must be at the beginning.");
    } else if (m.role == "user") {
      out += "<|im_start|>user\n";
      content_of(content);
      out += "<|im_end|>\n";
    } else if (m.role == "assistant") {
      std::string_view reasoning;
      if (m.reasoning_content) {
        reasoning = *m.reasoning_content;
      } else if (content.find("</think>") != std::string_view::npos) {
        reasoning = LStrip(AfterLast(RStrip(BeforeFirst(content, "</think>"), '\n'), "<think>"), '\n');
        content = LStrip(AfterLast(content, "</think>"), '\n');
      }
      reasoning = PyStrip(reasoning);
      if (i > last_query) {
        // Unlike Qwen3's, this template prints the think block even when the reasoning is empty.
        out += "<|im_start|>assistant\n<think>\n";
        content_of(reasoning);
        out += "\n</think>\n\n";
      } else {
        out += "<|im_start|>assistant\n";
      }
      content_of(content);
      for (size_t c = 0; c < m.tool_calls.size(); ++c) {
        if (c > 0) out += "\n<tool_call>\n<function=";
        else if (PyStrip(content).empty()) out += "<tool_call>\n<function=";
        else out += "\n\n<tool_call>\n<function=";
        content_of(m.tool_calls[c].name);
        out += ">\n";
        for (const python_json::Member& arg : req.arguments[i][c].members) {
          out += "<parameter=";
          content_of(arg.key);
          out += ">\n";
          // `tojson` for mappings and non-string sequences, else `|string` (Python's str()).
          const bool container = arg.value.kind == Value::Kind::kObject || arg.value.kind == Value::Kind::kArray;
          content_of(container ? python_json::Dumps(arg.value) : python_json::Str(arg.value));
          out += "\n</parameter>\n";
        }
        out += "</function>\n</tool_call>";
      }
      out += "<|im_end|>\n";
    } else if (m.role == "tool") {
      // `loop.previtem` is undefined for the first message: a leading tool message opens no
      // user turn (the template's quirk, reproduced).
      if (i > 0 && messages[i - 1].role != "tool") out += "<|im_start|>user";
      out += "\n<tool_response>\n";
      content_of(content);
      out += "\n</tool_response>";
      if (i + 1 == n || messages[i + 1].role != "tool") out += "<|im_end|>\n";
    } else {
      return InvalidArgument("Unexpected message role.");
    }
  }
  if (options.add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    out += options.enable_thinking ? "<think>\n" : "<think>\n\n</think>\n\n";
  }
  return chat;
}

}  // namespace specd
