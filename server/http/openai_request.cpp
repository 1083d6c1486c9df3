#include "server/http/openai_request.h"

#include <cmath>
#include <limits>
#include <set>
#include <string_view>

#include <nlohmann/json.hpp>

namespace specd::serve::http {
namespace {

using Json = nlohmann::ordered_json;

// Typed access to one JSON object's fields, naming the field (with its path) in every error.
class Fields {
 public:
  Fields(const Json& obj, std::string path) : obj_(obj), path_(std::move(path)) {}

  // Every key must be in `known`: a misspelt or unsupported parameter is an error.
  Status OnlyKnown(const std::set<std::string_view>& known) const {
    for (const auto& [k, v] : obj_.items()) {
      if (!known.contains(k)) return InvalidArgument("unknown field '{}'", Name(k));
    }
    return Status::Ok();
  }
  // Present and not null.
  bool Has(std::string_view k) const {
    const auto it = obj_.find(k);
    return it != obj_.end() && !it->is_null();
  }
  const Json& Get(std::string_view k) const { return *obj_.find(k); }
  std::string Name(std::string_view k) const { return path_.empty() ? std::string(k) : path_ + "." + std::string(k); }

  StatusOr<std::string> String(std::string_view k) const {
    const Json& v = Get(k);
    if (!v.is_string()) return InvalidArgument("'{}' must be a string", Name(k));
    return v.get<std::string>();
  }
  StatusOr<bool> Bool(std::string_view k) const {
    const Json& v = Get(k);
    if (!v.is_boolean()) return InvalidArgument("'{}' must be true or false", Name(k));
    return v.get<bool>();
  }
  StatusOr<double> Number(std::string_view k) const {
    const Json& v = Get(k);
    if (!v.is_number()) return InvalidArgument("'{}' must be a number", Name(k));
    return v.get<double>();
  }
  StatusOr<int64_t> Int(std::string_view k, int64_t lo, int64_t hi) const {
    const Json& v = Get(k);
    int64_t x = 0;
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(hi)) return InvalidArgument("'{}' must be in [{}, {}]", Name(k), lo, hi);
      x = static_cast<int64_t>(u);
    } else if (v.is_number_integer()) {
      x = v.get<int64_t>();
    } else if (v.is_number_float() && std::isfinite(v.get<double>()) && v.get<double>() == std::floor(v.get<double>()) &&
               std::fabs(v.get<double>()) < 9e15) {
      x = static_cast<int64_t>(v.get<double>());  // 5.0 is an integer in JSON's number model
    } else {
      return InvalidArgument("'{}' must be an integer", Name(k));
    }
    if (x < lo || x > hi) return InvalidArgument("'{}' must be in [{}, {}] (got {})", Name(k), lo, hi, x);
    return x;
  }

 private:
  const Json& obj_;
  std::string path_;
};

constexpr int64_t kU32 = std::numeric_limits<uint32_t>::max();

// A token id as JSON: an integer that fits int32 (the vocabulary check comes later). get<int32_t>
// alone would wrap 4294967301 to 5.
StatusOr<int32_t> TokenId(const Json& x, const char* field) {
  if (x.is_number_unsigned() && x.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) {
    return static_cast<int32_t>(x.get<uint64_t>());
  }
  if (x.is_number_integer() && !x.is_number_unsigned()) {
    const int64_t v = x.get<int64_t>();
    if (v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max()) {
      return static_cast<int32_t>(v);  // negative: refused with the vocabulary check
    }
  }
  return InvalidArgument("'{}' token ids must be integers in the vocabulary (got {})", field, x.dump());
}

// OpenAI parameters that only have a default here: accepted at that value, refused otherwise.
Status OnlyDefault(const Fields& f, std::string_view k, const Json& default_value, std::string_view why) {
  if (!f.Has(k) || f.Get(k) == default_value) return Status::Ok();
  return InvalidArgument("'{}' = {} is not supported ({})", f.Name(k), f.Get(k).dump(), why);
}

Status ParseStop(const Fields& f, v1::SamplingParams* s) {
  if (!f.Has("stop")) return Status::Ok();
  const Json& v = f.Get("stop");
  if (v.is_string()) {
    s->add_stop(v.get<std::string>());
    return Status::Ok();
  }
  if (!v.is_array()) return InvalidArgument("'stop' must be a string or an array of strings");
  for (const Json& x : v) {
    if (!x.is_string()) return InvalidArgument("'stop' must be a string or an array of strings");
    s->add_stop(x.get<std::string>());
  }
  return Status::Ok();
}

// The sampling and stopping fields both endpoints share, into `r`.
Status ParseCommon(const Fields& f, Endpoint ep, v1::GenerateRequest* r, ApiRequest* out) {
  v1::SamplingParams* s = r->mutable_sampling();
  if (f.Has("model")) {
    SPECD_ASSIGN_OR_RETURN(out->model, f.String("model"));
  }
  for (const char* k : {"max_tokens", "max_completion_tokens"}) {
    if (!f.Has(k)) continue;
    SPECD_ASSIGN_OR_RETURN(int64_t n, f.Int(k, 1, kU32));
    if (ep == Endpoint::kCompletion && std::string_view(k) == "max_completion_tokens") {
      return InvalidArgument("'max_completion_tokens' is a chat completions field; use 'max_tokens'");
    }
    s->set_max_tokens(static_cast<uint32_t>(n));
  }
  if (ep == Endpoint::kCompletion && !s->has_max_tokens()) s->set_max_tokens(16);  // OpenAI's default
  if (f.Has("temperature")) {
    SPECD_ASSIGN_OR_RETURN(double t, f.Number("temperature"));
    s->set_temperature(static_cast<float>(t));
  }
  if (f.Has("top_p")) {
    SPECD_ASSIGN_OR_RETURN(double p, f.Number("top_p"));
    s->set_top_p(static_cast<float>(p));
  }
  if (f.Has("min_p")) {
    SPECD_ASSIGN_OR_RETURN(double p, f.Number("min_p"));
    s->set_min_p(static_cast<float>(p));
  }
  if (f.Has("top_k")) {
    SPECD_ASSIGN_OR_RETURN(int64_t k, f.Int("top_k", -1, std::numeric_limits<int32_t>::max()));
    s->set_top_k(k < 0 ? 0u : static_cast<uint32_t>(k));  // -1 = off, as vLLM
  }
  if (f.Has("seed")) {
    SPECD_ASSIGN_OR_RETURN(int64_t seed, f.Int("seed", std::numeric_limits<int64_t>::min(),
                                                std::numeric_limits<int64_t>::max()));
    s->set_seed(static_cast<uint64_t>(seed));
  }
  if (f.Has("min_tokens")) {
    SPECD_ASSIGN_OR_RETURN(int64_t n, f.Int("min_tokens", 0, kU32));
    s->set_min_tokens(static_cast<uint32_t>(n));
  }
  if (f.Has("ignore_eos")) {
    SPECD_ASSIGN_OR_RETURN(bool b, f.Bool("ignore_eos"));
    s->set_ignore_eos(b);
  }
  if (f.Has("skip_special_tokens")) {
    SPECD_ASSIGN_OR_RETURN(bool b, f.Bool("skip_special_tokens"));
    s->set_skip_special_tokens(b);
  }
  if (f.Has("stop_token_ids")) {
    const Json& v = f.Get("stop_token_ids");
    if (!v.is_array()) return InvalidArgument("'stop_token_ids' must be an array of integers");
    for (const Json& x : v) {
      SPECD_ASSIGN_OR_RETURN(int32_t id, TokenId(x, "stop_token_ids"));
      s->add_stop_token_ids(id);
    }
  }
  SPECD_RETURN_IF_ERROR(ParseStop(f, s));
  if (f.Has("sampling_mode")) {  // specd: how a sampled request speculates
    SPECD_ASSIGN_OR_RETURN(std::string m, f.String("sampling_mode"));
    if (m == "rejection") {
      s->set_mode(v1::SamplingParams::MODE_REJECTION);
    } else if (m == "coupled") {
      s->set_mode(v1::SamplingParams::MODE_COUPLED);
    } else {
      return InvalidArgument("'sampling_mode' must be \"rejection\" or \"coupled\"");
    }
  }
  if (f.Has("speculative")) {  // specd: {"k": int, "drafter": "none" | one the server serves, "adaptive_k": bool}
    const Json& v = f.Get("speculative");
    if (!v.is_object()) return InvalidArgument("'speculative' must be an object");
    Fields sp(v, "speculative");
    SPECD_RETURN_IF_ERROR(sp.OnlyKnown({"k", "drafter", "adaptive_k"}));
    v1::SpeculationParams* p = r->mutable_speculation();
    if (sp.Has("k")) {
      SPECD_ASSIGN_OR_RETURN(int64_t k, sp.Int("k", 0, kU32));
      p->set_k(static_cast<uint32_t>(k));
    }
    if (sp.Has("drafter")) {
      SPECD_ASSIGN_OR_RETURN(std::string d, sp.String("drafter"));
      p->set_drafter(d);
    }
    if (sp.Has("adaptive_k")) {
      SPECD_ASSIGN_OR_RETURN(bool b, sp.Bool("adaptive_k"));
      p->set_adaptive_k(b);
    }
  }
  if (f.Has("n")) {
    SPECD_ASSIGN_OR_RETURN(int64_t n, f.Int("n", 1, 1 << 20));
    if (n != 1) return InvalidArgument("'n' = {} is not supported: specd returns one choice per request (n = 1)", n);
  }
  if (f.Has("stream")) {
    SPECD_ASSIGN_OR_RETURN(out->stream, f.Bool("stream"));
  }
  if (f.Has("stream_options")) {
    const Json& v = f.Get("stream_options");
    if (!v.is_object()) return InvalidArgument("'stream_options' must be an object");
    if (!out->stream) return InvalidArgument("'stream_options' is only allowed with \"stream\": true");
    Fields so(v, "stream_options");
    SPECD_RETURN_IF_ERROR(so.OnlyKnown({"include_usage", "continuous_usage_stats"}));
    if (so.Has("include_usage")) {
      SPECD_ASSIGN_OR_RETURN(out->include_usage, so.Bool("include_usage"));
    }
    SPECD_RETURN_IF_ERROR(OnlyDefault(so, "continuous_usage_stats", false, "usage comes once, at the end"));
  }
  if (f.Has("user")) SPECD_RETURN_IF_ERROR(f.String("user").status());  // accepted, not used
  SPECD_RETURN_IF_ERROR(OnlyDefault(f, "presence_penalty", 0, "no penalties"));
  SPECD_RETURN_IF_ERROR(OnlyDefault(f, "frequency_penalty", 0, "no penalties"));
  SPECD_RETURN_IF_ERROR(OnlyDefault(f, "repetition_penalty", 1, "no penalties"));
  SPECD_RETURN_IF_ERROR(OnlyDefault(f, "logprobs", ep == Endpoint::kChat ? Json(false) : Json(nullptr),
                                    "no log-probabilities"));
  SPECD_RETURN_IF_ERROR(OnlyDefault(f, "top_logprobs", 0, "no log-probabilities"));
  return Status::Ok();
}

// Message content: a string, null, or an array of {"type": "text", "text": ...} parts
// (concatenated, as the chat template does). Images and audio are refused: specd serves text.
StatusOr<std::string> ContentText(const Json& v, const std::string& where) {
  if (v.is_null()) return std::string();
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_array()) return InvalidArgument("'{}' must be a string, null or an array of content parts", where);
  std::string out;
  for (const Json& part : v) {
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) {
      return InvalidArgument("'{}' parts must be objects with a \"type\"", where);
    }
    const std::string type = part["type"].get<std::string>();
    if (type != "text") return InvalidArgument("'{}': content of type \"{}\" is not supported (text only)", where, type);
    if (!part.contains("text") || !part["text"].is_string()) {
      return InvalidArgument("'{}': a text part needs a string \"text\"", where);
    }
    out += part["text"].get<std::string>();
  }
  return out;
}

Status ParseToolCalls(const Json& v, const std::string& where, v1::ChatMessage* m) {
  if (!v.is_array()) return InvalidArgument("'{}' must be an array", where);
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string at = fmt::format("{}[{}]", where, i);
    if (!v[i].is_object()) return InvalidArgument("'{}' must be an object", at);
    Fields f(v[i], at);
    SPECD_RETURN_IF_ERROR(f.OnlyKnown({"id", "type", "function", "index"}));
    if (f.Has("type") && f.Get("type") != "function") return InvalidArgument("'{}.type' must be \"function\"", at);
    if (!f.Has("function") || !f.Get("function").is_object()) return InvalidArgument("'{}.function' is required", at);
    Fields fn(f.Get("function"), at + ".function");
    SPECD_RETURN_IF_ERROR(fn.OnlyKnown({"name", "arguments"}));
    if (!fn.Has("name")) return InvalidArgument("'{}' is required", fn.Name("name"));
    v1::ToolCall* c = m->add_tool_calls();
    SPECD_ASSIGN_OR_RETURN(*c->mutable_name(), fn.String("name"));
    // OpenAI sends the arguments as JSON text; the template needs them as an object.
    Json args = Json::object();
    if (fn.Has("arguments")) {
      const Json& a = fn.Get("arguments");
      args = a.is_string() ? Json::parse(a.get<std::string>(), nullptr, /*allow_exceptions=*/false) : a;
      if (!args.is_object()) return InvalidArgument("'{}' must be a JSON object (as text)", fn.Name("arguments"));
    }
    c->set_arguments_json(args.dump());
  }
  return Status::Ok();
}

Status ParseMessages(const Fields& f, v1::ChatPrompt* chat) {
  if (!f.Has("messages")) return InvalidArgument("'messages' is required");
  const Json& msgs = f.Get("messages");
  if (!msgs.is_array() || msgs.empty()) return InvalidArgument("'messages' must be a non-empty array");
  for (size_t i = 0; i < msgs.size(); ++i) {
    const std::string at = fmt::format("messages[{}]", i);
    if (!msgs[i].is_object()) return InvalidArgument("'{}' must be an object", at);
    Fields m(msgs[i], at);
    SPECD_RETURN_IF_ERROR(m.OnlyKnown({"role", "content", "name", "tool_calls", "tool_call_id", "reasoning_content",
                                       "reasoning", "refusal"}));
    if (!m.Has("role")) return InvalidArgument("'{}' is required", m.Name("role"));
    v1::ChatMessage* out = chat->add_messages();
    SPECD_ASSIGN_OR_RETURN(*out->mutable_role(), m.String("role"));
    const std::string& role = out->role();
    if (role != "system" && role != "user" && role != "assistant" && role != "tool" && role != "developer") {
      return InvalidArgument("'{}' = \"{}\" is not a role (system, developer, user, assistant, tool)", m.Name("role"),
                             role);
    }
    if (role == "developer") out->set_role("system");  // OpenAI's newer name for the system turn
    if (msgs[i].contains("content")) {
      SPECD_ASSIGN_OR_RETURN(*out->mutable_content(), ContentText(m.Get("content"), m.Name("content")));
    }
    for (const char* k : {"reasoning_content", "reasoning"}) {
      if (!m.Has(k)) continue;
      SPECD_ASSIGN_OR_RETURN(*out->mutable_reasoning_content(), m.String(k));
    }
    if (m.Has("tool_calls")) SPECD_RETURN_IF_ERROR(ParseToolCalls(m.Get("tool_calls"), m.Name("tool_calls"), out));
    for (const char* k : {"name", "tool_call_id", "refusal"}) {  // accepted; the template does not use them
      if (m.Has(k)) SPECD_RETURN_IF_ERROR(m.String(k).status());
    }
  }
  return Status::Ok();
}

Status ParseTools(const Fields& f, v1::ChatPrompt* chat) {
  bool use_tools = true;
  if (f.Has("tool_choice")) {
    const Json& tc = f.Get("tool_choice");
    if (tc == "none") {
      use_tools = false;  // the model is not told about the tools, and nothing is parsed
    } else if (tc != "auto") {
      return InvalidArgument("'tool_choice' = {} is not supported (\"auto\" or \"none\")", tc.dump());
    }
  }
  if (f.Has("parallel_tool_calls")) SPECD_RETURN_IF_ERROR(f.Bool("parallel_tool_calls").status());
  if (!f.Has("tools")) return Status::Ok();
  const Json& tools = f.Get("tools");
  if (!tools.is_array()) return InvalidArgument("'tools' must be an array");
  for (size_t i = 0; i < tools.size(); ++i) {
    const std::string at = fmt::format("tools[{}]", i);
    const Json& t = tools[i];
    if (!t.is_object() || !t.contains("type") || t["type"] != "function" || !t.contains("function") ||
        !t["function"].is_object() || !t["function"].contains("name") || !t["function"]["name"].is_string()) {
      return InvalidArgument("'{}' must be {{\"type\": \"function\", \"function\": {{\"name\": ..., ...}}}}", at);
    }
    if (use_tools) chat->add_tools_json(t.dump());
  }
  return Status::Ok();
}

Status ParseTemplateKwargs(const Fields& f, v1::ChatPrompt* chat) {
  if (!f.Has("chat_template_kwargs")) return Status::Ok();
  const Json& v = f.Get("chat_template_kwargs");
  if (!v.is_object()) return InvalidArgument("'chat_template_kwargs' must be an object");
  Fields k(v, "chat_template_kwargs");
  SPECD_RETURN_IF_ERROR(k.OnlyKnown({"enable_thinking"}));
  if (k.Has("enable_thinking")) {
    SPECD_ASSIGN_OR_RETURN(bool b, k.Bool("enable_thinking"));
    chat->set_enable_thinking(b);
  }
  return Status::Ok();
}

Status ParsePrompt(const Fields& f, v1::GenerateRequest* r) {
  if (!f.Has("prompt")) return InvalidArgument("'prompt' is required");
  const Json& p = f.Get("prompt");
  auto ids_of = [&](const Json& arr) -> Status {
    for (const Json& x : arr) {
      SPECD_ASSIGN_OR_RETURN(int32_t id, TokenId(x, "prompt"));
      r->mutable_token_ids()->add_ids(id);
    }
    return Status::Ok();
  };
  if (p.is_string()) {
    r->set_text(p.get<std::string>());
    return Status::Ok();
  }
  if (p.is_array() && !p.empty() && p[0].is_number()) return ids_of(p);
  if (p.is_array() && p.size() == 1 && p[0].is_string()) {
    r->set_text(p[0].get<std::string>());
    return Status::Ok();
  }
  if (p.is_array() && p.size() == 1 && p[0].is_array()) return ids_of(p[0]);
  if (p.is_array() && p.size() > 1) return InvalidArgument("'prompt' with several prompts is not supported (one per request)");
  return InvalidArgument("'prompt' must be a string, an array of token ids, or an array of one of them");
}

}  // namespace

StatusOr<ApiRequest> ParseApiRequest(Endpoint ep, const nlohmann::ordered_json& body, const ApiContext& ctx) {
  if (!body.is_object()) return InvalidArgument("the request body must be a JSON object");
  ApiRequest out;
  out.endpoint = ep;
  Fields f(body, "");
  std::set<std::string_view> known = {
      "model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "n", "stream",
      "stream_options", "user", "presence_penalty", "frequency_penalty", "repetition_penalty", "logprobs",
      "top_logprobs", "min_tokens", "ignore_eos", "skip_special_tokens", "stop_token_ids", "sampling_mode",
      "speculative"};
  if (ep == Endpoint::kChat) {
    known.insert({"messages", "max_completion_tokens", "tools", "tool_choice", "parallel_tool_calls",
                  "chat_template_kwargs"});
  } else {
    known.insert({"prompt", "echo", "suffix", "best_of"});
  }
  SPECD_RETURN_IF_ERROR(f.OnlyKnown(known));

  v1::GenerateRequest r;
  SPECD_RETURN_IF_ERROR(ParseCommon(f, ep, &r, &out));
  if (!out.model.empty() && !ctx.served_model.empty() && out.model != ctx.served_model) {
    return NotFound("the model '{}' does not exist: this server serves '{}'", out.model, ctx.served_model);
  }
  if (ep == Endpoint::kChat) {
    if (!ctx.text->has_tokenizer()) return InvalidArgument("model has no tokenizer: use /v1/completions with token ids");
    v1::ChatPrompt* chat = r.mutable_chat();
    SPECD_RETURN_IF_ERROR(ParseMessages(f, chat));
    SPECD_RETURN_IF_ERROR(ParseTools(f, chat));
    SPECD_RETURN_IF_ERROR(ParseTemplateKwargs(f, chat));
  } else {
    SPECD_RETURN_IF_ERROR(ParsePrompt(f, &r));
    SPECD_RETURN_IF_ERROR(OnlyDefault(f, "echo", false, "the prompt is not echoed"));
    SPECD_RETURN_IF_ERROR(OnlyDefault(f, "suffix", nullptr, "no fill-in-the-middle"));
    SPECD_RETURN_IF_ERROR(OnlyDefault(f, "best_of", 1, "one candidate per request"));
  }
  PrepareDefaults defaults;
  defaults.max_tokens_fill_context = ep == Endpoint::kChat;
  SPECD_ASSIGN_OR_RETURN(out.prepared, PrepareGenerate(r, ctx.limits, *ctx.text, defaults));
  return out;
}

}  // namespace specd::serve::http
