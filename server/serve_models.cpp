#include "server/serve_models.h"

#include <algorithm>
#include <chrono>
#include <string_view>

#include <fmt/ranges.h>
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
  // --drafter: one name, or several served side by side (the first is the default).
  std::vector<std::string> asked;
  for (size_t at = 0; !o.drafter.empty() && at <= o.drafter.size();) {
    const size_t comma = std::min(o.drafter.find(',', at), o.drafter.size());
    std::string name = o.drafter.substr(at, comma - at);
    SPECD_RETURN_IF_ERROR(CheckDrafterName(name));
    if (std::find(asked.begin(), asked.end(), name) != asked.end()) {
      return InvalidArgument("--drafter {}: '{}' is listed twice", o.drafter, name);
    }
    asked.push_back(std::move(name));
    at = comma + 1;
  }
  if (asked.size() > 1 && std::find(asked.begin(), asked.end(), "none") != asked.end()) {
    return InvalidArgument("--drafter {}: 'none' cannot be listed with drafters (every request may ask for none)",
                           o.drafter);
  }
  const bool wants_draft = std::find(asked.begin(), asked.end(), "draft") != asked.end();
  if (o.model.empty()) {
    if (!o.draft.empty()) return InvalidArgument("--draft needs --model (the embedded default brings its own draft)");
    SPECD_ASSIGN_OR_RETURN(DefaultModelDirs d, MaterializeDefaultModel());
    p.model_dir = d.target;
    p.embedded = true;
    // The embedded draft is used unless other drafters are asked for.
    if (asked.empty() || wants_draft) p.draft_dir = d.draft;
  }
  if (asked.empty()) asked.push_back(p.draft_dir.empty() ? "ngram" : "draft");
  if (asked.front() != "none") p.drafters = asked;
  if (p.serves("draft") && p.draft_dir.empty()) return InvalidArgument("--drafter draft needs --draft DIR");
  if (!p.serves("draft") && !o.draft.empty()) {
    return InvalidArgument("--draft given with --drafter {}; drop one of them", p.drafter_list());
  }
  return Status::Ok();
}

// A model folder, or `random:NAME[:SEED]`: random weights of a released Qwen3.5 shape
// (checkpoint/presets.h), for benchmarks and soak runs at real sizes without a checkpoint.
StatusOr<std::unique_ptr<Qwen35Model>> LoadModel(const std::string& spec, Backend* backend, uint64_t default_seed,
                                                  const LoadOptions& opt = {}) {
  constexpr std::string_view kRandom = "random:";
  if (spec.rfind(kRandom, 0) != 0) return Qwen35Model::Load(spec, backend, opt);
  if (opt.quantize_fp8) return InvalidArgument("--quantize fp8 needs a checkpoint, not {}", spec);
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

// How the target's weights are held, for the log and ModelInfo.
std::string WeightFormat(const Qwen35Model& m, const LoadOptions& lo) {
  const std::string act = DTypeName(m.backend()->act_dtype());
  if (m.fp8_tensors() == 0) return fmt::format("{} (as stored, converted)", act);
  const auto& fp8 = m.config().fp8;
  const Fp8Blocks b = fp8 ? *fp8 : *lo.quantize_fp8;
  // The projections hold FP8 values; until the FP8 kernels land they are kept widened.
  return fmt::format("fp8 {}x{} blocks ({}, {} tensors), held as {}", b.rows, b.cols,
                     fp8 ? "checkpoint" : "--quantize fp8", m.fp8_tensors(), act);
}

// The memory plan of what the engine will allocate, with the weights as loaded. With a device (or
// --debug-device-memory), the budget is --gpu-memory-fraction of it less what others use, and the
// KV pool is sized from it unless --kv-cache-tokens fixes it; a plan that cannot fit stops here.
Status PlanServingMemory(const ServeOptions& o, ServingModels& m) {
  MemoryPlanInput in;
  in.target = m.target->config();
  in.act = m.backend->act_dtype();
  in.target_weight_bytes = m.target->weight_bytes();
  in.mtp = m.serves("mtp");
  if (m.draft) {
    in.draft = m.draft->config();
    in.draft_weight_bytes = m.draft->weight_bytes();
  }
  in.graphs = m.backend->CapturesGraphs();
  in.engine = m.engine;
  int64_t total = o.debug_device_memory > 0 ? o.debug_device_memory : m.backend->device_memory_total();
  if (total <= 0) {
    SPECD_ASSIGN_OR_RETURN(m.memory, PlanMemory(in));
  } else {
    // Others' use: what the device has in use beyond the weights this process just loaded.
    int64_t ours = in.target_weight_bytes + (m.draft ? in.draft_weight_bytes : 0);
    if (in.mtp) ours += m.target->mtp_head()->bytes;
    const int64_t used = o.debug_device_memory > 0 ? ours : m.backend->device_memory_used();
    const int64_t others = std::max<int64_t>(used - ours, 0);
    const int64_t budget = static_cast<int64_t>(o.gpu_memory_fraction * static_cast<double>(total)) - others;
    StatusOr<MemoryPlan> plan = PlanMemoryWithin(in, budget);
    if (!plan.ok()) {
      return Status(plan.status().code(),
                    fmt::format("{} (device {:.1f} MB, --gpu-memory-fraction {}, {:.1f} MB in use by others)",
                                plan.status().message(), static_cast<double>(total) / 1e6, o.gpu_memory_fraction,
                                static_cast<double>(others) / 1e6));
    }
    m.memory = std::move(plan).value();
    m.engine.kv_cache_tokens = m.memory.kv_tokens;
  }
  spdlog::info("memory plan ({} KV rows for requests):\n{}", m.memory.kv_tokens, m.memory.Table());
  return Status::Ok();
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
  LoadOptions lo;
  if (o.quantize == "fp8") lo.quantize_fp8 = Fp8Blocks{128, 128};
  const auto t0 = std::chrono::steady_clock::now();
  SPECD_ASSIGN_OR_RETURN(m.target, LoadModel(m.model_dir, m.backend.get(), 1, lo));
  m.backend->Synchronize();
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  m.weight_format = WeightFormat(*m.target, lo);
  const double mb = static_cast<double>(m.target->weight_bytes()) / 1e6;
  spdlog::info("weights of {}: {}, {:.1f} MB on {}, loaded in {:.2f} s ({:.2f} GB/s into the backend)", m.model_dir,
               m.weight_format, mb, m.backend->name(), load_s, mb / 1e3 / std::max(load_s, 1e-9));
  if (m.serves("mtp")) {
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
  if (m.serves("draft")) {
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
  eo.default_k = m.drafters.empty() ? 0 : o.k;
  eo.prefill_chunk = o.prefill_chunk;
  eo.max_prefill_tokens = o.max_prefill_tokens;
  eo.kv_cache_tokens = o.kv_cache_tokens;
  if (o.prefix_cache == "on") {
    // A byte budget alone splits itself; the entries flag, when given, caps it.
    eo.prefix_cache_entries = o.prefix_cache_bytes > 0 && !o.prefix_cache_entries_given ? (1 << 16) : o.prefix_cache_entries;
    eo.prefix_cache_tokens = o.prefix_cache_tokens;
    eo.prefix_cache_bytes = o.prefix_cache_bytes;
    eo.prefix_cache_interval = std::min<int64_t>(o.prefill_chunk, 128);
    // The plan, resolved here so that the log and ModelInfo tell what every engine will hold.
    const DType act = m.backend->act_dtype();
    SPECD_RETURN_IF_ERROR(ResolvePrefixCacheBudget(eo, cfg, act, m.serves("mtp")));
    if (eo.prefix_cache_tokens == 0) eo.prefix_cache_tokens = 4 * m.max_context;
    const double snap = static_cast<double>(PrefixSnapshotBytes(cfg, act)) / 1e6;
    const double kv = static_cast<double>(KvBytesPerToken(cfg, act) * eo.prefix_cache_tokens) / 1e6;
    spdlog::info("prefix cache: {} entries of {:.1f} MB of GDN state + {} KV rows ({:.1f} MB) = {:.1f} MB{}",
                 eo.prefix_cache_entries, snap, eo.prefix_cache_tokens, kv, eo.prefix_cache_entries * snap + kv,
                 m.serves("mtp") ? " (+ the MTP head's rows)" : "");
  }
  SPECD_RETURN_IF_ERROR(PlanServingMemory(o, m));
  return m;
}

bool ServingModels::serves(std::string_view drafter) const {
  return std::find(drafters.begin(), drafters.end(), drafter) != drafters.end();
}

std::string ServingModels::drafter_list() const {
  return drafters.empty() ? std::string("none") : fmt::format("{}", fmt::join(drafters, ","));
}

EngineFactory ServingModels::MakeEngineFactory() const {
  return [names = drafters, target = target.get(), draft = draft.get(),
          eo = engine]() -> StatusOr<std::unique_ptr<SpeculativeEngine>> {
    std::vector<std::unique_ptr<Drafter>> ds;
    for (const std::string& n : names) {
      SPECD_ASSIGN_OR_RETURN(std::unique_ptr<Drafter> d, MakeDrafter(n, target, draft, eo.max_seqs, eo.max_ctx, eo.max_k));
      ds.push_back(std::move(d));
    }
    return SpeculativeEngine::Create(target, std::move(ds), eo);
  };
}

}  // namespace specd::serve
