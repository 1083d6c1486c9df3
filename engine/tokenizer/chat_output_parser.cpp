#include "tokenizer/chat_output_parser.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <utility>

#include <nlohmann/json.hpp>

#include "tokenizer/utf8.h"

namespace specd {

namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";
constexpr std::string_view kCallOpen = "<tool_call>";
constexpr std::string_view kCallClose = "</tool_call>";
constexpr std::string_view kFunctionOpen = "<function=";
constexpr std::string_view kFunctionClose = "</function>";
constexpr std::string_view kParamOpen = "<parameter=";
constexpr std::string_view kParamClose = "</parameter>";
// Newlines right before "</think>" that are dropped (and so held back while they may be).
constexpr size_t kMaxNewlinesBeforeThinkClose = 3;
// Object / array parameter values nested deeper than this stay strings.
constexpr int kMaxJsonDepth = 64;

enum class ParamType { kAny, kNull, kString, kInteger, kNumber, kBoolean, kObject, kArray };

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

std::string_view TrimSpace(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

std::string Lower(std::string_view s) {
  std::string r(s);
  for (char& c : r) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return r;
}

// Length of the longest suffix of `s` that is a proper prefix of `tag`: text that may still grow
// into the tag. The caller has checked that `s` does not contain the tag.
size_t PartialTagSuffix(std::string_view s, std::string_view tag) {
  for (size_t k = std::min(s.size(), tag.size() - 1); k > 0; --k) {
    if (s.substr(s.size() - k) == tag.substr(0, k)) return k;
  }
  return 0;
}

// Length of an incomplete (but so far well-formed) UTF-8 character at the end of `s`.
size_t PartialUtf8Suffix(std::string_view s) {
  for (size_t k = 1; k <= std::min<size_t>(3, s.size()); ++k) {
    const auto b = static_cast<unsigned char>(s[s.size() - k]);
    if (b < 0x80) return 0;
    if (b >= 0xC0) {
      const utf8::Seq seq = utf8::ScanOne(s, s.size() - k);
      return seq.kind == utf8::SeqKind::kIncomplete && seq.len == k ? k : 0;
    }
  }
  return 0;
}

size_t CountTrailing(std::string_view s, char c) {
  size_t n = 0;
  while (n < s.size() && s[s.size() - 1 - n] == c) ++n;
  return n;
}

ParamType TypeByName(std::string_view name) {
  static const std::map<std::string, ParamType, std::less<>> kTypes = {
      {"null", ParamType::kNull},     {"string", ParamType::kString},   {"integer", ParamType::kInteger},
      {"number", ParamType::kNumber}, {"boolean", ParamType::kBoolean}, {"object", ParamType::kObject},
      {"array", ParamType::kArray}};
  auto it = kTypes.find(Lower(name));
  return it == kTypes.end() ? ParamType::kAny : it->second;
}

// The type a property schema gives: "type" (a name, or a list whose first non-null entry counts),
// else the first alternative of "anyOf" / "oneOf" with a concrete non-null type. Loose on purpose:
// anything it does not understand leaves the value a string.
ParamType SchemaType(const nlohmann::json& schema, int depth = 0) {
  if (!schema.is_object() || depth > 8) return ParamType::kAny;
  if (auto it = schema.find("type"); it != schema.end()) {
    if (it->is_string()) return TypeByName(it->get_ref<const std::string&>());
    if (it->is_array()) {
      for (const auto& t : *it) {
        if (!t.is_string()) continue;
        const ParamType p = TypeByName(t.get_ref<const std::string&>());
        if (p != ParamType::kNull) return p;
      }
    }
    return ParamType::kAny;
  }
  for (const char* key : {"anyOf", "oneOf"}) {
    auto it = schema.find(key);
    if (it == schema.end() || !it->is_array()) continue;
    for (const auto& alt : *it) {
      const ParamType p = SchemaType(alt, depth + 1);
      if (p != ParamType::kNull && p != ParamType::kAny) return p;
    }
  }
  return ParamType::kAny;
}

using ojson = nlohmann::ordered_json;

std::optional<ojson> ParseInteger(std::string_view t) {
  const char* end = t.data() + t.size();
  // Digits only (after an optional '-'): from_chars alone would also take "12abc" partially.
  const std::string_view digits = !t.empty() && t[0] == '-' ? t.substr(1) : t;
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  int64_t i = 0;
  if (auto r = std::from_chars(t.data(), end, i); r.ec == std::errc() && r.ptr == end) return ojson(i);
  uint64_t u = 0;
  if (auto r = std::from_chars(t.data(), end, u); r.ec == std::errc() && r.ptr == end) return ojson(u);
  return std::nullopt;
}

std::optional<ojson> ParseNumber(std::string_view t) {
  if (auto i = ParseInteger(t)) return i;
  const char* end = t.data() + t.size();
  double d = 0;
  auto r = std::from_chars(t.data(), end, d);
  // JSON has no inf / nan: those stay text.
  if (t.empty() || r.ec != std::errc() || r.ptr != end || !std::isfinite(d)) return std::nullopt;
  return ojson(d);
}

ojson ConvertValue(std::string_view text, ParamType type) {
  const std::string_view t = TrimSpace(text);
  if (t == "null") return nullptr;
  std::optional<ojson> v;
  switch (type) {
    case ParamType::kInteger: v = ParseInteger(t); break;
    case ParamType::kNumber: v = ParseNumber(t); break;
    case ParamType::kBoolean: {
      const std::string l = Lower(t);
      if (l == "true" || l == "false") v = ojson(l == "true");
      break;
    }
    case ParamType::kObject:
    case ParamType::kArray: {
      // Deeper nesting stays text: dump() recurses, and generated text is not trusted.
      bool too_deep = false;
      auto depth_limit = [&too_deep](int depth, ojson::parse_event_t, ojson&) {
        too_deep = too_deep || depth > kMaxJsonDepth;
        return !too_deep;
      };
      ojson j = ojson::parse(t.begin(), t.end(), depth_limit, /*allow_exceptions=*/false);
      if (!too_deep && (type == ParamType::kObject ? j.is_object() : j.is_array())) v = std::move(j);
      break;
    }
    case ParamType::kAny:
    case ParamType::kNull:
    case ParamType::kString: break;
  }
  return v ? std::move(*v) : ojson(std::string(text));
}

// "<tag=NAME>" at s[pos] (the caller has matched `open`): NAME and the position after '>', or
// nullopt for an empty name, a missing '>', or a name with whitespace or '<' in it.
std::optional<std::pair<std::string_view, size_t>> TagName(std::string_view s, size_t pos, std::string_view open) {
  const size_t begin = pos + open.size();
  const size_t gt = s.find('>', begin);
  if (gt == std::string_view::npos || gt == begin) return std::nullopt;
  const std::string_view name = s.substr(begin, gt - begin);
  if (std::any_of(name.begin(), name.end(), [](char c) { return IsSpace(c) || c == '<'; })) return std::nullopt;
  return std::make_pair(name, gt + 1);
}

// Drops the newlines that follow a think tag; false while the buffer holds nothing else.
bool SkipLeadingNewlines(std::string& buf, bool& skip) {
  if (!skip) return true;
  const size_t n = buf.find_first_not_of('\n');
  buf.erase(0, n);
  if (n == std::string::npos) return false;
  skip = false;
  return true;
}

size_t SkipSpace(std::string_view s, size_t pos) {
  while (pos < s.size() && IsSpace(s[pos])) ++pos;
  return pos;
}

}  // namespace

struct ToolSchemas {
  // function name -> parameter name -> type; a parameter missing here is not converted at all.
  std::map<std::string, std::map<std::string, ParamType, std::less<>>, std::less<>> functions;

  // The text between "<tool_call>" and "</tool_call>"; nullopt when it is not exactly one well-formed
  // function element.
  std::optional<ParsedToolCall> ParseBlock(std::string_view body) const {
    size_t pos = SkipSpace(body, 0);
    if (!body.substr(pos).starts_with(kFunctionOpen)) return std::nullopt;
    auto fn = TagName(body, pos, kFunctionOpen);
    if (!fn) return std::nullopt;
    pos = fn->second;
    auto schema = functions.find(fn->first);
    ojson args = ojson::object();
    for (;;) {
      pos = SkipSpace(body, pos);
      const std::string_view rest = body.substr(pos);
      if (rest.starts_with(kFunctionClose)) {
        pos += kFunctionClose.size();
        break;
      }
      if (!rest.starts_with(kParamOpen)) return std::nullopt;
      auto param = TagName(body, pos, kParamOpen);
      if (!param) return std::nullopt;
      const size_t close = body.find(kParamClose, param->second);
      if (close == std::string_view::npos) return std::nullopt;
      std::string_view value = body.substr(param->second, close - param->second);
      // The format writes the value on lines of its own: "<parameter=P>\nVALUE\n</parameter>".
      if (value.starts_with('\n')) value.remove_prefix(1);
      if (value.ends_with('\n')) value.remove_suffix(1);
      std::optional<ParamType> type;
      if (schema != functions.end()) {
        if (auto p = schema->second.find(param->first); p != schema->second.end()) type = p->second;
      }
      args[std::string(param->first)] = type ? ConvertValue(value, *type) : ojson(std::string(value));
      pos = close + kParamClose.size();
    }
    if (SkipSpace(body, pos) != body.size()) return std::nullopt;
    return ParsedToolCall{std::string(fn->first),
                          args.dump(-1, ' ', /*ensure_ascii=*/false, ojson::error_handler_t::replace)};
  }
};

StatusOr<ChatOutputParser> ChatOutputParser::Create(ChatOutputOptions opt) {
  auto tools = std::make_shared<ToolSchemas>();
  for (size_t i = 0; i < opt.tools_json.size(); ++i) {
    const nlohmann::json tool = nlohmann::json::parse(opt.tools_json[i], nullptr, /*allow_exceptions=*/false);
    if (tool.is_discarded()) return InvalidArgument("tools[{}]: not valid JSON", i);
    if (!tool.is_object()) return InvalidArgument("tools[{}]: not a JSON object", i);
    auto fn = tool.find("function");
    if (fn == tool.end() || !fn->is_object()) return InvalidArgument("tools[{}]: no 'function' object", i);
    auto name = fn->find("name");
    if (name == fn->end() || !name->is_string() || name->get_ref<const std::string&>().empty()) {
      return InvalidArgument("tools[{}]: 'function.name' is not a non-empty string", i);
    }
    const nlohmann::json* props = nullptr;
    if (auto ps = fn->find("parameters"); ps != fn->end() && !ps->is_null()) {
      if (!ps->is_object()) return InvalidArgument("tools[{}]: 'function.parameters' is not an object", i);
      if (auto pr = ps->find("properties"); pr != ps->end() && !pr->is_null()) {
        if (!pr->is_object()) return InvalidArgument("tools[{}]: 'function.parameters.properties' is not an object", i);
        props = &*pr;
      }
    }
    // A repeated name: the first declaration's types stay.
    auto [params, inserted] = tools->functions.try_emplace(name->get<std::string>());
    if (!inserted || props == nullptr) continue;
    for (auto it = props->begin(); it != props->end(); ++it) params->second.emplace(it.key(), SchemaType(it.value()));
  }
  ChatOutputParser p;
  p.parse_tool_calls_ = opt.parse_tool_calls;
  p.tools_ = std::move(tools);
  p.mode_ = opt.starts_in_reasoning ? Mode::kReasoning : Mode::kStart;
  return p;
}

ChatOutputDelta ChatOutputParser::Feed(std::string_view text) {
  buf_.append(text);
  ChatOutputDelta out;
  Process(out, /*final=*/false);
  return out;
}

ChatOutputDelta ChatOutputParser::Finish() {
  ChatOutputDelta out;
  Process(out, /*final=*/true);
  return out;
}

ChatOutputDelta ChatOutputParser::FeedLast(std::string_view text) {
  ChatOutputDelta d = Feed(text);
  ChatOutputDelta rest = Finish();
  const size_t base = d.content.size();
  d.reasoning += rest.reasoning;
  d.content += rest.content;
  for (size_t i = 0; i < rest.tool_calls.size(); ++i) {
    d.tool_calls.push_back(std::move(rest.tool_calls[i]));
    if (i < rest.tool_call_content_offsets.size()) d.tool_call_content_offsets.push_back(base + rest.tool_call_content_offsets[i]);
  }
  return d;
}

void ChatOutputParser::Process(ChatOutputDelta& out, bool final) {
  for (bool progress = true; progress;) {
    switch (mode_) {
      case Mode::kStart: progress = StepStart(final); break;
      case Mode::kReasoning: progress = StepReasoning(out, final); break;
      case Mode::kContent: progress = StepContent(out, final); break;
      case Mode::kToolCall: progress = StepToolCall(out, final); break;
    }
  }
}

bool ChatOutputParser::StepStart(bool final) {
  if (buf_.starts_with(kThinkOpen)) {
    buf_.erase(0, kThinkOpen.size());
    mode_ = Mode::kReasoning;
    skip_newlines_ = true;
    return true;
  }
  if (!final && kThinkOpen.starts_with(buf_)) return false;  // may still become "<think>"
  mode_ = Mode::kContent;
  return true;
}

bool ChatOutputParser::StepReasoning(ChatOutputDelta& out, bool final) {
  if (!SkipLeadingNewlines(buf_, skip_newlines_)) return false;
  if (const size_t end = buf_.find(kThinkClose); end != std::string::npos) {
    std::string_view r = std::string_view(buf_).substr(0, end);
    r.remove_suffix(std::min(kMaxNewlinesBeforeThinkClose, CountTrailing(r, '\n')));
    out.reasoning.append(r);
    buf_.erase(0, end + kThinkClose.size());
    mode_ = Mode::kContent;
    skip_newlines_ = true;
    return true;
  }
  size_t keep = 0;
  if (!final) {
    const std::string_view b = buf_;
    const size_t tag = PartialTagSuffix(b, kThinkClose);
    const size_t cut_char = tag == 0 ? PartialUtf8Suffix(b) : 0;
    // Newlines followed by a partial character are not right before "</think>": they can go.
    keep = cut_char != 0
               ? cut_char
               : tag + std::min(kMaxNewlinesBeforeThinkClose, CountTrailing(b.substr(0, b.size() - tag), '\n'));
  }
  out.reasoning.append(buf_, 0, buf_.size() - keep);
  buf_.erase(0, buf_.size() - keep);
  return false;
}

bool ChatOutputParser::StepContent(ChatOutputDelta& out, bool final) {
  if (!SkipLeadingNewlines(buf_, skip_newlines_)) return false;
  if (parse_tool_calls_) {
    if (const size_t start = buf_.find(kCallOpen); start != std::string::npos) {
      out.content.append(buf_, 0, start);
      buf_.erase(0, start + kCallOpen.size());
      mode_ = Mode::kToolCall;
      block_scanned_ = 0;
      return true;
    }
  }
  size_t keep = 0;
  if (!final) {
    if (parse_tool_calls_) keep = PartialTagSuffix(buf_, kCallOpen);
    if (keep == 0) keep = PartialUtf8Suffix(buf_);
  }
  out.content.append(buf_, 0, buf_.size() - keep);
  buf_.erase(0, buf_.size() - keep);
  return false;
}

bool ChatOutputParser::StepToolCall(ChatOutputDelta& out, bool final) {
  // A block must open with "<function=": once the text after the tag cannot, the tag is content and
  // the text after it is parsed again (it may hold the real "<tool_call>").
  const std::string_view head = std::string_view(buf_).substr(SkipSpace(buf_, 0));
  const std::string_view want = kFunctionOpen.substr(0, std::min(head.size(), kFunctionOpen.size()));
  if (!head.starts_with(want)) {
    out.content.append(kCallOpen);
    mode_ = Mode::kContent;
    return true;
  }
  const size_t end = buf_.find(kCallClose, block_scanned_);
  if (end == std::string::npos) {
    if (final) {  // never closed: what was generated is content
      out.content.append(kCallOpen);
      out.content.append(buf_);
      buf_.clear();
      mode_ = Mode::kContent;
      return true;
    }
    block_scanned_ = buf_.size() - std::min(buf_.size(), kCallClose.size() - 1);
    return false;
  }
  const std::string_view body = std::string_view(buf_).substr(0, end);
  if (auto call = tools_->ParseBlock(body)) {
    out.tool_call_content_offsets.push_back(out.content.size());
    out.tool_calls.push_back(std::move(*call));
  } else {
    out.content.append(kCallOpen);
    out.content.append(body);
    out.content.append(kCallClose);
  }
  buf_.erase(0, end + kCallClose.size());
  mode_ = Mode::kContent;
  return true;
}

}  // namespace specd
