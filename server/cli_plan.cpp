#include "server/cli_plan.h"

#include <cstdio>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "checkpoint/presets.h"
#include "speculative/memory_plan.h"

namespace specd::cli {
namespace {

StatusOr<ModelConfig> ConfigOf(const std::string& spec) {
  if (spec.starts_with("random:")) return ReleasedShapes(spec.substr(7));
  return LoadModelConfig(spec);
}

// The largest value in [lo, hi] for which fits(v) holds (fits is monotone), or lo - 1.
template <typename F>
int64_t Largest(int64_t lo, int64_t hi, F fits) {
  if (!fits(lo)) return lo - 1;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (fits(mid)) lo = mid; else hi = mid - 1;
  }
  return lo;
}

}  // namespace

Status RunPlan(const PlanArgs& a) {
  if (a.device_memory <= 0) return InvalidArgument("--device-memory must be positive (e.g. 141G)");
  MemoryPlanInput in;
  SPECD_ASSIGN_OR_RETURN(in.target, ConfigOf(a.model));
  if (!a.draft.empty()) {
    SPECD_ASSIGN_OR_RETURN(ModelConfig d, ConfigOf(a.draft));
    in.draft = std::move(d);
  }
  in.act = DType::kBF16;  // the CUDA backend's weights and activations (FP8 weights are widened today)
  in.mtp = a.mtp;
  in.engine.max_seqs = a.max_batch;
  in.engine.max_ctx = a.max_context;
  in.engine.max_k = a.k;
  in.engine.default_k = a.k;
  in.engine.max_prefill_tokens = a.max_prefill_tokens;
  if (a.prefix_cache_bytes > 0) {
    in.engine.prefix_cache_entries = 1 << 16;
    in.engine.prefix_cache_bytes = a.prefix_cache_bytes;
    in.engine.prefix_cache_interval = 128;
  }
  const int64_t budget = static_cast<int64_t>(a.fraction * static_cast<double>(a.device_memory));
  auto fits = [&](int batch, int64_t ctx) {
    MemoryPlanInput t = in;
    t.engine.max_seqs = batch;
    t.engine.max_ctx = ctx;
    auto p = PlanMemory(t);  // every slot at full context
    return p.ok() && p->total() <= budget;
  };
  const int64_t max_batch = Largest(1, 4096, [&](int64_t b) { return fits(static_cast<int>(b), a.max_context); });
  const int64_t max_ctx = Largest(1, 262144,
                                  [&](int64_t c) { return fits(a.max_batch, c); });
  StatusOr<MemoryPlan> plan = PlanMemoryWithin(in, budget);
  if (a.json) {
    nlohmann::json j;
    j["budget_bytes"] = budget;
    j["fits"] = plan.ok();
    if (plan.ok()) {
      j["kv_cache_tokens"] = plan->kv_tokens;
      for (const auto& p : plan->parts) j["parts"][p.name] = p.bytes;
      j["total_bytes"] = plan->total();
    } else {
      j["error"] = plan.status().message();
    }
    j["max_batch_at_full_context"] = max_batch;
    j["max_context_at_full_batch"] = max_ctx;
    std::printf("%s\n", j.dump(1).c_str());
    return plan.ok() ? Status::Ok() : plan.status();
  }
  std::printf("%s on a %.1f GB device at --gpu-memory-fraction %.2f (budget %.1f GB), batch %d, context %lld, k %d%s%s\n",
              a.model.c_str(), static_cast<double>(a.device_memory) / 1e9, a.fraction,
              static_cast<double>(budget) / 1e9, a.max_batch, static_cast<long long>(a.max_context), a.k,
              a.mtp ? ", MTP head" : "", a.draft.empty() ? "" : (", draft " + a.draft).c_str());
  if (plan.ok()) {
    std::printf("%s\n", plan->Table().c_str());
    std::printf("KV rows for requests: %lld (every slot at full context: %lld)\n",
                static_cast<long long>(plan->kv_tokens), static_cast<long long>(int64_t{a.max_batch} * a.max_context));
  } else {
    std::printf("does not fit: %s\n", plan.status().message().c_str());
  }
  std::printf("largest batch with every slot at context %lld: %lld\n", static_cast<long long>(a.max_context),
              static_cast<long long>(max_batch));
  std::printf("longest context with all %d slots full: %lld\n", a.max_batch, static_cast<long long>(max_ctx));
  std::printf("(the daemon's budget is also less what the device already holds at startup: the CUDA context "
              "and other processes; and its allocator rounds blocks up, which the fraction's headroom covers)\n");
  return plan.ok() ? Status::Ok() : plan.status();
}

}  // namespace specd::cli
