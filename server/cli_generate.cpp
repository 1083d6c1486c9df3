// `specd generate`: offline generation with optional speculation (docs/server.md).
#include "server/cli_generate.h"

#include <cstdio>

#include <nlohmann/json.hpp>

#include "qwen35/model.h"
#include "server/cli_text.h"
#include "speculative/draft_vocab.h"
#include "speculative/engine.h"

namespace specd::cli {

Status RunGenerate(const GenerateArgs& a) {
  if (a.prompt.empty() == a.prompt_ids.empty()) return InvalidArgument("give exactly one of --prompt or --prompt-ids");
  std::string drafter = a.drafter;
  if (drafter.empty()) drafter = a.draft.empty() ? "none" : "draft";
  SPECD_RETURN_IF_ERROR(CheckDrafterName(drafter));
  if (drafter == "draft" && a.draft.empty()) return InvalidArgument("--drafter draft needs --draft DIR");
  SamplingParams sp;
  sp.temperature = a.temperature;
  sp.top_k = a.top_k;
  sp.top_p = a.top_p;
  sp.min_p = a.min_p;
  sp.seed = a.seed;
  if (a.sampling_mode == "coupled") {
    sp.mode = SamplingMode::kCoupled;
  } else if (a.sampling_mode != "rejection") {
    return InvalidArgument("unknown sampling mode '{}' (expected rejection or coupled)", a.sampling_mode);
  }
  SPECD_RETURN_IF_ERROR(ValidateSampling(sp));
  if (a.k < 0 || a.k > kMaxDraftTokens) return InvalidArgument("--k must be in [0, {}] (got {})", kMaxDraftTokens, a.k);

  SPECD_ASSIGN_OR_RETURN(auto backend, MakeBackend(a.device));
  SPECD_ASSIGN_OR_RETURN(auto target, Qwen35Model::Load(a.model, backend.get()));
  SPECD_ASSIGN_OR_RETURN(auto text, TextCodec::ForModel(a.model));
  std::vector<int32_t> prompt;
  if (!a.prompt_ids.empty()) {
    SPECD_ASSIGN_OR_RETURN(prompt, ParseIds(a.prompt_ids));
  } else {
    SPECD_ASSIGN_OR_RETURN(prompt, text->Encode(a.prompt));
  }
  const int64_t max_ctx = static_cast<int64_t>(prompt.size()) + a.max_tokens + kMaxVerifySpan;
  std::unique_ptr<Qwen35Model> draft_model;
  if (drafter == "draft") {
    SPECD_ASSIGN_OR_RETURN(draft_model, Qwen35Model::Load(a.draft, backend.get()));
  }
  if (drafter == "mtp") {
    Status st = target->LoadMtpHead(a.model);
    if (!st.ok()) return Status(st.code(), fmt::format("--drafter mtp: {}: {}", a.model, st.message()));
    if (!a.mtp_vocab.empty()) {
      SPECD_ASSIGN_OR_RETURN(std::vector<int32_t> ids, LoadDraftVocab(a.mtp_vocab, target->config().vocab_size));
      SPECD_RETURN_IF_ERROR(target->SetMtpVocab(std::move(ids)));
    }
  } else if (!a.mtp_vocab.empty()) {
    return InvalidArgument("--mtp-vocab needs --drafter mtp");
  }
  SPECD_ASSIGN_OR_RETURN(std::unique_ptr<Drafter> d, MakeDrafter(drafter, target.get(), draft_model.get(), 1, max_ctx, a.k));
  EngineOptions eo;
  eo.max_seqs = 1;
  eo.max_ctx = max_ctx;
  eo.default_k = d ? a.k : 0;
  SPECD_ASSIGN_OR_RETURN(auto engine, SpeculativeEngine::Create(target.get(), std::move(d), eo));
  GenerationRequest req;
  req.prompt = prompt;
  req.sampling = sp;
  req.max_tokens = a.max_tokens;
  req.min_tokens = a.min_tokens;
  req.ignore_eos = a.ignore_eos;
  req.adaptive_k = a.adaptive_k;
  if (!a.stop_ids.empty()) {
    SPECD_ASSIGN_OR_RETURN(req.stop_ids, ParseIds(a.stop_ids));
  }
  SPECD_ASSIGN_OR_RETURN(int id, engine->Add(std::move(req)));
  size_t shown = 0;
  while (!engine->Finished(id)) {
    SPECD_RETURN_IF_ERROR(engine->Step());
    if (!a.json) {  // stream text as it comes
      const auto& g = engine->Generated(id);
      std::fputs(text->Feed({g.begin() + static_cast<std::ptrdiff_t>(shown), g.end()}).c_str(), stdout);
      std::fflush(stdout);
      shown = g.size();
    }
  }
  const auto& ids = engine->Generated(id);
  const SpeculativeStats& st = engine->Stats(id);
  if (a.json) {
    nlohmann::json j;
    j["ids"] = ids;
    j["text"] = text->Decode(ids);
    j["finish_reason"] = FinishReasonName(engine->Reason(id));
    j["stats"] = {{"draft_tokens", st.draft_tokens},
                  {"accepted_tokens", st.accepted_tokens},
                  {"verify_steps", st.verify_steps},
                  {"acceptance_rate", st.acceptance_rate()},
                  {"mean_acceptance_length", st.mean_acceptance_length()},
                  {"per_position_acceptance", st.per_position_acceptance()}};
    std::puts(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::fputs(text->Flush().c_str(), stdout);
    std::fprintf(stderr, "\n[%zu tokens, finish=%s, drafter=%s, acceptance %.3f, mean accepted length %.2f]\n",
                 ids.size(), FinishReasonName(engine->Reason(id)), drafter.c_str(), st.acceptance_rate(),
                 st.mean_acceptance_length());
  }
  return Status::Ok();
}

}  // namespace specd::cli
