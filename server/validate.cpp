#include "server/validate.h"

#include <algorithm>
#include <cmath>

#include <fmt/ranges.h>

namespace specd::serve {
namespace {

constexpr uint32_t kDefaultMaxTokens = 16;
constexpr int kMaxStopStrings = 16;
constexpr size_t kMaxStopStringBytes = 256;
constexpr int kMaxStopIds = 64;
constexpr size_t kMaxRequestIdBytes = 256;
constexpr int kMaxTools = 128;

Status CheckIds(const google::protobuf::RepeatedField<int32_t>& ids, int64_t vocab, const char* what) {
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return InvalidArgument("{} token id {} (at index {}) is out of the vocabulary [0, {})", what, ids[i], i, vocab);
    }
  }
  return Status::Ok();
}

StatusOr<SamplingParams> Sampling(const v1::SamplingParams& s) {
  SamplingParams p;
  if (s.has_temperature()) {
    if (!std::isfinite(s.temperature()) || s.temperature() < 0.f) {
      return InvalidArgument("temperature must be a finite number >= 0 (got {})", s.temperature());
    }
    p.temperature = s.temperature();
  }
  if (s.has_top_p()) {
    if (!(s.top_p() > 0.f && s.top_p() <= 1.f)) return InvalidArgument("top_p must be in (0, 1] (got {})", s.top_p());
    p.top_p = s.top_p();
  }
  if (s.has_min_p()) {
    if (!(s.min_p() >= 0.f && s.min_p() <= 1.f)) return InvalidArgument("min_p must be in [0, 1] (got {})", s.min_p());
    p.min_p = s.min_p();
  }
  if (s.has_top_k()) {
    if (s.top_k() > static_cast<uint32_t>(INT32_MAX)) return InvalidArgument("top_k is too large ({})", s.top_k());
    p.top_k = static_cast<int>(s.top_k());
  }
  if (s.has_seed()) p.seed = s.seed();
  switch (s.mode()) {
    case v1::SamplingParams::MODE_UNSPECIFIED:
    case v1::SamplingParams::MODE_REJECTION: p.mode = SamplingMode::kRejection; break;
    case v1::SamplingParams::MODE_COUPLED: p.mode = SamplingMode::kCoupled; break;
    default: return InvalidArgument("unknown sampling mode {}", static_cast<int>(s.mode()));
  }
  SPECD_RETURN_IF_ERROR(ValidateSampling(p));
  return p;
}

}  // namespace

StatusOr<cli::ChatEncoding> EncodeChat(const v1::ChatPrompt& chat, const cli::TextCodec& text) {
  if (chat.messages().empty()) return InvalidArgument("empty prompt: the chat has no messages");
  std::vector<cli::ChatTurn> turns;
  for (const auto& m : chat.messages()) {
    cli::ChatTurn t{m.role(), m.content(), std::nullopt, {}};
    if (m.has_reasoning_content()) t.reasoning = m.reasoning_content();
    for (const auto& c : m.tool_calls()) t.tool_calls.push_back({c.name(), c.arguments_json()});
    turns.push_back(std::move(t));
  }
  cli::ChatRequestOptions opt;
  opt.add_generation_prompt = chat.has_add_generation_prompt() ? chat.add_generation_prompt() : true;
  opt.enable_thinking = chat.has_enable_thinking() ? chat.enable_thinking() : true;
  opt.parse_specials_in_content = chat.special_tokens_in_content();
  if (chat.tools_json_size() > kMaxTools) return InvalidArgument("at most {} tools", kMaxTools);
  opt.tools_json.assign(chat.tools_json().begin(), chat.tools_json().end());
  auto enc = text.EncodeChat(turns, opt);
  if (!enc.ok()) return InvalidArgument("chat prompt: {}", enc.status().message());
  return enc;
}

StatusOr<PreparedRequest> PrepareGenerate(const v1::GenerateRequest& r, const ServeLimits& lim,
                                          const cli::TextCodec& text, const PrepareDefaults& defaults) {
  PreparedRequest out;
  if (r.request_id().size() > kMaxRequestIdBytes) {
    return InvalidArgument("request_id is longer than {} bytes", kMaxRequestIdBytes);
  }
  out.request_id = r.request_id();
  GenerationRequest& g = out.gen;

  // ---- prompt ----
  switch (r.prompt_case()) {
    case v1::GenerateRequest::kTokenIds:
      SPECD_RETURN_IF_ERROR(CheckIds(r.token_ids().ids(), lim.vocab_size, "prompt"));
      g.prompt.assign(r.token_ids().ids().begin(), r.token_ids().ids().end());
      break;
    case v1::GenerateRequest::kText: {
      if (!text.has_tokenizer()) return InvalidArgument("model has no tokenizer: send the prompt as token_ids");
      if (r.text().empty()) break;  // reported as an empty prompt below
      auto ids = text.Encode(r.text());
      if (!ids.ok()) return InvalidArgument("prompt text: {}", ids.status().message());
      g.prompt = std::move(*ids);
      break;
    }
    case v1::GenerateRequest::kChat: {
      if (!text.has_tokenizer()) return InvalidArgument("model has no tokenizer: send the prompt as token_ids");
      SPECD_ASSIGN_OR_RETURN(cli::ChatEncoding enc, EncodeChat(r.chat(), text));
      g.prompt = std::move(enc.ids);
      ChatOutputSpec& co = out.chat_output;
      co.parse = r.chat().has_parse_output() ? r.chat().parse_output() : true;
      co.starts_in_reasoning = enc.ends_in_reasoning;
      co.parse_tool_calls = r.chat().tools_json_size() > 0;
      co.tools_json.assign(r.chat().tools_json().begin(), r.chat().tools_json().end());
      break;
    }
    case v1::GenerateRequest::PROMPT_NOT_SET: return InvalidArgument("empty prompt: set text, token_ids or chat");
  }
  if (g.prompt.empty()) return InvalidArgument("empty prompt");
  for (int32_t t : g.prompt) {  // a tokenizer larger than the model's embedding table
    if (t < 0 || t >= lim.vocab_size) {
      return InvalidArgument("prompt token id {} is out of the model's vocabulary [0, {})", t, lim.vocab_size);
    }
  }

  // ---- sampling and stopping ----
  const v1::SamplingParams& s = r.sampling();
  SPECD_ASSIGN_OR_RETURN(g.sampling, Sampling(s));
  uint32_t max_tokens = s.has_max_tokens() ? s.max_tokens() : kDefaultMaxTokens;
  if (!s.has_max_tokens() && defaults.max_tokens_fill_context) {
    const int64_t room = lim.max_context - static_cast<int64_t>(g.prompt.size());
    if (room < 1) {
      return InvalidArgument("the prompt ({} tokens) leaves no room in the context length {}", g.prompt.size(),
                             lim.max_context);
    }
    max_tokens = static_cast<uint32_t>(std::min<int64_t>(room, UINT32_MAX));
  }
  if (max_tokens < 1) return InvalidArgument("max_tokens must be >= 1 (got {})", max_tokens);
  const int64_t need = static_cast<int64_t>(g.prompt.size()) + max_tokens;
  if (need > lim.max_context) {
    return InvalidArgument("prompt ({} tokens) + max_tokens ({}) exceed the context length {}", g.prompt.size(),
                           max_tokens, lim.max_context);
  }
  g.max_tokens = static_cast<int>(max_tokens);
  const uint32_t min_tokens = s.has_min_tokens() ? s.min_tokens() : 0;
  if (min_tokens > max_tokens) {
    return InvalidArgument("min_tokens ({}) must not exceed max_tokens ({})", min_tokens, max_tokens);
  }
  g.min_tokens = static_cast<int>(min_tokens);
  g.ignore_eos = s.has_ignore_eos() && s.ignore_eos();
  if (s.stop_token_ids_size() > kMaxStopIds) return InvalidArgument("at most {} stop_token_ids", kMaxStopIds);
  SPECD_RETURN_IF_ERROR(CheckIds(s.stop_token_ids(), lim.vocab_size, "stop"));
  g.stop_ids.assign(s.stop_token_ids().begin(), s.stop_token_ids().end());
  if (s.stop_size() > kMaxStopStrings) return InvalidArgument("at most {} stop strings", kMaxStopStrings);
  for (const std::string& st : s.stop()) {
    if (st.empty()) return InvalidArgument("stop strings must not be empty");
    if (st.size() > kMaxStopStringBytes) return InvalidArgument("stop strings are limited to {} bytes", kMaxStopStringBytes);
    out.text.stop_strings.push_back(st);
  }
  if (!out.text.stop_strings.empty() && !text.has_tokenizer()) {
    return InvalidArgument("model has no tokenizer: stop strings cannot be matched (use stop_token_ids)");
  }
  out.text.skip_special_tokens = s.has_skip_special_tokens() ? s.skip_special_tokens() : true;

  // ---- speculation ----
  // The server serves one or more drafters (the first is the default); a request may name any of
  // them or turn drafting off.
  const v1::SpeculationParams& sp = r.speculation();
  if (sp.has_drafter()) {
    const std::string& d = sp.drafter();
    SPECD_RETURN_IF_ERROR(CheckDrafterName(d));
    if (d != "none" && std::find(lim.drafters.begin(), lim.drafters.end(), d) == lim.drafters.end()) {
      return InvalidArgument("drafter '{}' is not served here; a request may ask for {}'none'", d,
                             lim.drafters.empty() ? std::string() : fmt::format("'{}' or ", fmt::join(lim.drafters, "', '")));
    }
    g.drafter = d;
    if (d == "none") g.k = 0;
  }
  if (sp.has_k()) {
    if (sp.k() > static_cast<uint32_t>(lim.max_k)) {
      return InvalidArgument("k must be in [0, {}] (got {})", lim.max_k, sp.k());
    }
    if (g.k != 0) g.k = static_cast<int>(sp.k());
  }
  g.adaptive_k = sp.has_adaptive_k() && sp.adaptive_k();
  if (r.has_prefix_cache()) g.prefix_cache = r.prefix_cache();
  return out;
}

}  // namespace specd::serve
