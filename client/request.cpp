#include "client/request.h"

#include <fstream>
#include <iterator>

#include <CLI/CLI.hpp>

#include "client/common.h"

namespace specd::client {

void AddSamplingFlags(CLI::App* a, SamplingFlags* f, bool full) {
  f->o_max_tokens = a->add_option("--max-tokens", f->max_tokens, "Tokens to generate at most (server default 16)");
  f->o_temperature = a->add_option("--temperature", f->temperature, "0 = greedy");
  f->o_top_p = a->add_option("--top-p", f->top_p);
  f->o_top_k = a->add_option("--top-k", f->top_k);
  f->o_min_p = a->add_option("--min-p", f->min_p);
  f->o_seed = a->add_option("--seed", f->seed);
  a->add_flag("--ignore-eos", f->ignore_eos, "Do not stop at the end-of-sequence token");
  f->o_mode = a->add_option("--sampling-mode", f->sampling_mode, "rejection | coupled");
  f->o_drafter = a->add_option("--drafter", f->drafter, "none, or one of the server's drafters (specd-client info: drafters)");
  f->o_k = a->add_option("--k", f->k, "Drafts per step (0 = no speculation for this request)");
  a->add_flag("--adaptive-k", f->adaptive_k, "Let the server choose k per step");
  if (full) {
    f->o_min_tokens = a->add_option("--min-tokens", f->min_tokens, "No eos/stop before this many tokens");
    a->add_option("--stop", f->stop, "Stop string (repeatable)")->take_all();
    a->add_option("--stop-ids", f->stop_ids, "Stop token ids, comma-separated");
  }
}

bool ApplySamplingFlags(const SamplingFlags& f, v1::GenerateRequest* req, std::string* error) {
  v1::SamplingParams* s = req->mutable_sampling();
  auto given = [](const CLI::Option* o) { return o && o->count() > 0; };
  if (given(f.o_max_tokens)) s->set_max_tokens(f.max_tokens);
  if (given(f.o_min_tokens)) s->set_min_tokens(f.min_tokens);
  if (given(f.o_temperature)) s->set_temperature(f.temperature);
  if (given(f.o_top_p)) s->set_top_p(f.top_p);
  if (given(f.o_top_k)) s->set_top_k(f.top_k);
  if (given(f.o_min_p)) s->set_min_p(f.min_p);
  if (given(f.o_seed)) s->set_seed(f.seed);
  if (f.ignore_eos) s->set_ignore_eos(true);
  for (const auto& st : f.stop) s->add_stop(st);
  if (!f.stop_ids.empty()) {
    auto ids = ParseIdList(f.stop_ids, error);
    if (!ids) return false;
    for (int32_t id : *ids) s->add_stop_token_ids(id);
  }
  if (given(f.o_mode)) {
    if (f.sampling_mode == "rejection") {
      s->set_mode(v1::SamplingParams::MODE_REJECTION);
    } else if (f.sampling_mode == "coupled") {
      s->set_mode(v1::SamplingParams::MODE_COUPLED);
    } else {
      *error = "unknown --sampling-mode '" + f.sampling_mode + "' (expected rejection or coupled)";
      return false;
    }
  }
  v1::SpeculationParams* sp = req->mutable_speculation();
  if (given(f.o_drafter)) sp->set_drafter(f.drafter);
  if (given(f.o_k)) sp->set_k(f.k);
  if (f.adaptive_k) sp->set_adaptive_k(true);
  return true;
}

bool LoadChat(const std::string& path, v1::ChatPrompt* chat, std::string* error) {
  std::ifstream in(path);
  if (!in) {
    *error = "cannot read " + path;
    return false;
  }
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) {
    *error = path + ": not valid JSON";
    return false;
  }
  const nlohmann::json* msgs = &j;
  if (j.is_object()) {
    if (!j.contains("messages")) {
      *error = path + ": expected a list of messages or an object with \"messages\"";
      return false;
    }
    msgs = &j["messages"];
    if (j.contains("add_generation_prompt") && j["add_generation_prompt"].is_boolean()) {
      chat->set_add_generation_prompt(j["add_generation_prompt"].get<bool>());
    }
    if (j.contains("enable_thinking") && j["enable_thinking"].is_boolean()) {
      chat->set_enable_thinking(j["enable_thinking"].get<bool>());
    }
    if (j.contains("special_tokens_in_content") && j["special_tokens_in_content"].is_boolean()) {
      chat->set_special_tokens_in_content(j["special_tokens_in_content"].get<bool>());
    }
    if (j.contains("tools")) {  // OpenAI tool definitions
      if (!j["tools"].is_array()) {
        *error = path + ": \"tools\" must be a list";
        return false;
      }
      for (const auto& t : j["tools"]) chat->add_tools_json(t.dump());
    }
  }
  if (!msgs->is_array()) {
    *error = path + ": messages must be a list";
    return false;
  }
  for (const auto& m : *msgs) {
    if (!m.is_object() || !m.contains("role") || !m.contains("content") || !m["role"].is_string() ||
        !m["content"].is_string()) {
      *error = path + ": each message needs string \"role\" and \"content\"";
      return false;
    }
    v1::ChatMessage* cm = chat->add_messages();
    cm->set_role(m["role"].get<std::string>());
    cm->set_content(m["content"].get<std::string>());
  }
  return true;
}

const char* FinishReasonName(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_EOS: return "eos";
    case v1::FINISH_REASON_STOP: return "stop";
    case v1::FINISH_REASON_ABORT: return "abort";
    default: return "none";
  }
}

nlohmann::json ResultJson(const std::vector<int32_t>& ids, const std::string& text, v1::FinishReason reason,
                          const v1::SpeculativeStats& st) {
  nlohmann::json j;
  j["ids"] = ids;
  j["text"] = text;
  j["finish_reason"] = FinishReasonName(reason);
  j["stats"] = {{"draft_tokens", st.draft_tokens()},
                {"accepted_tokens", st.accepted_tokens()},
                {"verify_steps", st.verify_steps()},
                {"acceptance_rate", st.acceptance_rate()},
                {"mean_acceptance_length", st.mean_acceptance_length()},
                {"per_position_acceptance",
                 std::vector<double>(st.per_position_acceptance().begin(), st.per_position_acceptance().end())}};
  return j;
}

}  // namespace specd::client
