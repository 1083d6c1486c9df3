#include "server/serve_models.h"

#include <algorithm>
#include <string_view>

#include <spdlog/spdlog.h>

#include "checkpoint/presets.h"
#include "server/default_model.h"
#include "speculative/draft_vocab.h"
#include "speculative/drafter.h"

namespace specd::serve {
namespace {

// Where the models come from, after defaults are applied.
Status ResolveModels(const ServeOptions& o, ServingModels& p) {
  p.model_dir = o.model;
  p.draft_dir = o.draft;
  if (o.model.empty()) {
    if (!o.draft.empty()) return InvalidArgument("--draft needs --model (the embedded default brings its own draft)");
    SPECD_ASSIGN_OR_RETURN(DefaultModelDirs d, MaterializeDefaultModel());
    p.model_dir = d.target;
    p.embedded = true;
    // The embedded draft is used unless another drafter is asked for.
    if (o.drafter.empty() || o.drafter == "draft") p.draft_dir = d.draft;
  }
  p.drafter = o.drafter.empty() ? (p.draft_dir.empty() ? "ngram" : "draft") : o.drafter;
  if (p.drafter == "draft" && p.draft_dir.empty()) return InvalidArgument("--drafter draft needs --draft DIR");
  if (p.drafter != "draft" && !o.draft.empty()) {
    return InvalidArgument("--draft given with --drafter {}; drop one of them", p.drafter);
  }
  return Status::Ok();
}

// A model folder, or `random:NAME[:SEED]`: random weights of a released Qwen3.5 shape
// (checkpoint/presets.h), for benchmarks and soak runs at real sizes without a checkpoint.
StatusOr<std::unique_ptr<Qwen35Model>> LoadModel(const std::string& spec, Backend* backend, uint64_t default_seed) {
  constexpr std::string_view kRandom = "random:";
  if (spec.rfind(kRandom, 0) != 0) return Qwen35Model::Load(spec, backend);
  std::string name = spec.substr(kRandom.size());
  uint64_t seed = default_seed;
  if (const size_t colon = name.find(':'); colon != std::string::npos) {
    try {
      seed = std::stoull(name.substr(colon + 1));
    } catch (const std::exception&) {
      return InvalidArgument("{}: the seed after the shape name must be a number", spec);
    }
    name = name.substr(0, colon);
  }
  SPECD_ASSIGN_OR_RETURN(ModelConfig cfg, ReleasedShapes(name));
  try {
    return Qwen35Model::Random(cfg, backend, seed);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("not enough {} memory for random weights of {}", backend->name(), name);
  }
}

}  // namespace

StatusOr<ServingModels> LoadServingModels(const ServeOptions& o) {
  if (o.k > o.max_k) return InvalidArgument("--k {} exceeds --max-k {}", o.k, o.max_k);
  ServingModels m;
  SPECD_RETURN_IF_ERROR(ResolveModels(o, m));
  if (m.embedded) {
    spdlog::info("no --model: serving the embedded demo pair from {} (a 4.2M-parameter Qwen3.5 trained on "
                 "Python source with its own 0.6M MTP head, and a 0.95M draft: plausible-looking Python, not a "
                 "real model)",
                 m.model_dir);
  }
  BackendOptions bo;
  bo.skinny_wide = o.batch_invariant;
  bo.graph_limit = o.cuda_graph_limit;
  bo.graph_capture_after = o.cuda_graph_capture_after;
  SPECD_ASSIGN_OR_RETURN(m.backend, MakeBackend(o.device, bo));
  if (m.backend->device() == Device::kCuda) {
    // The bound on graph memory (docs/DESIGN-NOTES.md, CUDA graphs): a fixed number of
    // executables and one workspace sized by the largest captured batch (spans of at most
    // kMaxVerifySpan tokens, at most --max-batch of them), plus a capped cache of freed blocks.
    spdlog::info("CUDA graphs: at most {} kept (a batch shape is captured when seen {} times), one shared "
                 "workspace for batches of at most {} tokens; /metrics has specd:cuda_graph_* and "
                 "specd:device_pool_cached_bytes",
                 o.cuda_graph_limit, o.cuda_graph_capture_after, int64_t{o.max_batch} * kMaxVerifySpan);
  }
  SPECD_ASSIGN_OR_RETURN(m.target, LoadModel(m.model_dir, m.backend.get(), 1));
  if (m.drafter == "mtp") {
    // The head is loaded and checked at startup, so a checkpoint without one (or with a broken
    // one) stops here with the tensor named, never at the first request.
    if (m.model_dir.starts_with("random:")) return InvalidArgument("--drafter mtp needs a checkpoint with mtp.* tensors");
    Status st = m.target->LoadMtpHead(m.model_dir);
    if (!st.ok()) return Status(st.code(), fmt::format("--drafter mtp: {}: {}", m.model_dir, st.message()));
    spdlog::info("MTP head of {}: {:.1f} MB", m.model_dir, static_cast<double>(m.target->mtp_head()->bytes) / 1e6);
    if (!o.mtp_vocab.empty()) {
      SPECD_ASSIGN_OR_RETURN(std::vector<int32_t> ids, LoadDraftVocab(o.mtp_vocab, m.target->config().vocab_size));
      const size_t n = ids.size();
      SPECD_RETURN_IF_ERROR(m.target->SetMtpVocab(std::move(ids)));
      spdlog::info("MTP draft vocabulary {}: {} of {} tokens", o.mtp_vocab, n, m.target->config().vocab_size);
    }
  } else if (!o.mtp_vocab.empty()) {
    return InvalidArgument("--mtp-vocab needs --drafter mtp");
  }
  if (m.drafter == "draft") {
    SPECD_ASSIGN_OR_RETURN(m.draft, LoadModel(m.draft_dir, m.backend.get(), 2));
  }
  SPECD_ASSIGN_OR_RETURN(m.text, cli::TextCodec::ForModel(m.model_dir, o.tokenizer));
  const ModelConfig& cfg = m.target->config();
  m.max_context = std::min<int64_t>(cfg.max_position_embeddings, 32768);
  if (o.max_context > 0) {
    if (o.max_context > cfg.max_position_embeddings) {
      return InvalidArgument("--max-context {} exceeds the model's max_position_embeddings {}", o.max_context,
                             cfg.max_position_embeddings);
    }
    m.max_context = o.max_context;
  }
  EngineOptions& eo = m.engine;
  eo.max_seqs = o.max_batch;
  eo.max_ctx = m.max_context;
  eo.max_k = o.max_k;
  eo.default_k = m.drafter == "none" ? 0 : o.k;
  eo.prefill_chunk = o.prefill_chunk;
  eo.max_prefill_tokens = o.max_prefill_tokens;
  eo.kv_cache_tokens = o.kv_cache_tokens;
  return m;
}

EngineFactory ServingModels::MakeEngineFactory() const {
  return [drafter = drafter, target = target.get(), draft = draft.get(),
          eo = engine]() -> StatusOr<std::unique_ptr<SpeculativeEngine>> {
    SPECD_ASSIGN_OR_RETURN(std::unique_ptr<Drafter> d,
                           MakeDrafter(drafter, target, draft, eo.max_seqs, eo.max_ctx, eo.max_k));
    return SpeculativeEngine::Create(target, std::move(d), eo);
  };
}

}  // namespace specd::serve
