#include "speculative/memory_plan.h"

#include <algorithm>

#include <fmt/format.h>

#include "cache/model_cache.h"
#include "qwen35/weights.h"

namespace specd {
namespace {

// Bytes of one forward's activations over `tokens` rows with `logit_rows` rows of logits: the
// fp32 residual, the widest layer's projections and MLP, the GDN chunk workspace, the logits;
// doubled for the allocator's rounding and freed blocks held for reuse. An estimate: the
// device pool's high-water mark on the GPU is the measured figure (docs/memory.md).
int64_t ForwardBytes(const ModelConfig& c, DType act, int64_t tokens, int64_t logit_rows) {
  const int64_t a = static_cast<int64_t>(DTypeSize(act));
  const int64_t H = c.hidden_size, Hv = c.linear_num_value_heads, dv = c.linear_value_head_dim;
  const int64_t dk = c.linear_key_head_dim, Hk = c.linear_num_key_heads;
  const int64_t D = c.head_dim, Hq = c.num_attention_heads, Hkv = c.num_key_value_heads;
  const int64_t gdn_in = c.conv_dim() + Hv * dv + 2 * Hv, attn_in = 2 * Hq * D + 2 * Hkv * D;
  const int64_t mlp = c.is_moe ? int64_t{c.num_experts_per_tok} * 3 * c.moe_intermediate_size +
                                     3 * c.shared_expert_intermediate_size + c.num_experts
                               : 3 * c.intermediate_size;
  const int64_t per_token = 4 * H + a * (2 * H + std::max(gdn_in, attn_in) + std::max(Hv * dv, Hq * D) + mlp) +
                            4 * (Hk * dk + Hv * dv + 2 * Hv) + 4 * Hv * (2 * 64 + dk + dv);
  return 2 * (tokens * per_token + logit_rows * c.vocab_size * 4);
}

}  // namespace

int64_t MemoryPlan::total() const {
  int64_t n = 0;
  for (const auto& p : parts) n += p.bytes;
  return n;
}

int64_t MemoryPlan::bytes(const std::string& name) const {
  for (const auto& p : parts) {
    if (p.name == name) return p.bytes;
  }
  return 0;
}

std::string MemoryPlan::Table() const {
  std::string s;
  for (const auto& p : parts) {
    s += fmt::format("  {:<28} {:>10.1f} MB{}\n", p.name, static_cast<double>(p.bytes) / 1e6,
                     p.estimate ? "  (estimate)" : "");
  }
  s += fmt::format("  {:<28} {:>10.1f} MB", "total", static_cast<double>(total()) / 1e6);
  if (budget >= 0) s += fmt::format(" of a {:.1f} MB budget", static_cast<double>(budget) / 1e6);
  return s;
}

StatusOr<MemoryPlan> PlanMemory(const MemoryPlanInput& in) {
  const ModelConfig& c = in.target;
  EngineOptions eo = in.engine;
  if (eo.max_seqs <= 0 || eo.max_ctx <= 0 || eo.max_k < 0 || eo.kv_cache_tokens < 0) {
    return InvalidArgument("memory plan: max_seqs and max_ctx must be positive, max_k and kv tokens >= 0");
  }
  SPECD_RETURN_IF_ERROR(ResolvePrefixCacheBudget(eo, c, in.act, in.mtp));
  const DType act = in.act;
  const int64_t a = static_cast<int64_t>(DTypeSize(act));
  MemoryPlan plan;
  auto add = [&](std::string name, int64_t bytes, bool estimate = false) {
    if (bytes > 0) plan.parts.push_back({std::move(name), bytes, estimate});
  };
  add("target weights", in.target_weight_bytes >= 0 ? in.target_weight_bytes : WeightBytes(c, act));
  if (in.mtp) add("MTP head weights", MtpWeightBytes(c, act));
  if (in.draft) add("draft model weights", in.draft_weight_bytes >= 0 ? in.draft_weight_bytes : WeightBytes(*in.draft, act));

  // The target's cache, as SpeculativeEngine::Create makes it: the requests' KV pool, then the
  // prefix store's blocks on top.
  CacheOptions co;
  co.num_slots = eo.max_seqs;
  co.max_ctx = eo.max_ctx;
  co.log_capacity = eo.max_k + 1;
  const int64_t B = co.kv_block_size;
  const int64_t request_blocks =
      eo.kv_cache_tokens > 0 ? (eo.kv_cache_tokens + B - 1) / B : (eo.max_ctx + B - 1) / B * eo.max_seqs;
  int64_t store_blocks = 0;
  if (eo.prefix_cache_entries > 0) {
    const int64_t rows = eo.prefix_cache_tokens > 0 ? eo.prefix_cache_tokens : 4 * eo.max_ctx;
    store_blocks = (rows + B - 1) / B;
  }
  co.kv_blocks = request_blocks + store_blocks;
  const CacheBytes t = PlanCacheBytes(c, act, co);
  const int64_t kv_block = KvBytesPerToken(c, act) * B;
  plan.kv_tokens = request_blocks * B;
  add("KV pool (requests)", request_blocks * kv_block);
  add("GDN state (slots)", t.gdn_state);
  // The block table and the pad slot's own blocks (graph padding rows).
  add("block table, pad slot", t.table + t.kv - (request_blocks + store_blocks) * kv_block);
  add("verify log", t.verify_log);
  if (eo.prefix_cache_entries > 0) {
    int64_t bytes = store_blocks * kv_block + eo.prefix_cache_entries * PrefixSnapshotBytes(c, act);
    if (in.mtp) {  // the head's rows beside each entry (MtpDrafter::ReservePrefixStates)
      const int64_t head_block = 2 * int64_t{c.num_key_value_heads} * c.head_dim * a * B;
      bytes += (store_blocks + eo.prefix_cache_entries) * head_block + eo.prefix_cache_entries * c.hidden_size * a;
    }
    add("prefix cache", bytes);
  }
  if (in.mtp) {
    ModelConfig h = c;
    h.num_hidden_layers = 1;
    h.layer_types = {LayerType::kFullAttention};
    CacheOptions mo;
    mo.num_slots = eo.max_seqs;
    mo.max_ctx = eo.max_ctx;
    mo.log_capacity = std::max(1, eo.max_k);
    add("MTP head cache", PlanCacheBytes(h, act, mo).total() + int64_t{eo.max_seqs} * c.hidden_size * a);
  }
  if (in.draft) {
    CacheOptions dco;
    dco.num_slots = eo.max_seqs;
    dco.max_ctx = eo.max_ctx;
    dco.log_capacity = std::max(1, eo.max_k);
    dco.checkpoints = true;
    add("draft model cache", PlanCacheBytes(*in.draft, act, dco).total());
  }
  // Forward workspaces: the largest prompt step (its last rows' logits) and the largest verify
  // step (every row's logits); graphs replay from one shared workspace of the largest captured
  // batch (decode / verify shapes).
  const int64_t verify_rows = int64_t{eo.max_seqs} * (eo.max_k + 1);
  const int64_t prefill = ForwardBytes(c, act, eo.max_prefill_tokens, eo.max_seqs);
  const int64_t verify = ForwardBytes(c, act, verify_rows, verify_rows);
  add("forward workspace", std::max(prefill, verify), true);
  if (in.graphs) add("CUDA graph workspace", verify, true);
  return plan;
}

StatusOr<MemoryPlan> PlanMemoryWithin(const MemoryPlanInput& in, int64_t budget) {
  if (in.engine.kv_cache_tokens > 0) {
    SPECD_ASSIGN_OR_RETURN(MemoryPlan p, PlanMemory(in));
    p.budget = budget;
    if (p.total() > budget) {
      return ResourceExhausted("the memory plan needs {:.1f} MB, over the {:.1f} MB budget (--kv-cache-tokens {}):\n{}",
                               static_cast<double>(p.total()) / 1e6, static_cast<double>(budget) / 1e6,
                               in.engine.kv_cache_tokens, p.Table());
    }
    return p;
  }
  // Every slot at max_ctx, if it fits.
  SPECD_ASSIGN_OR_RETURN(MemoryPlan full, PlanMemory(in));
  full.budget = budget;
  if (full.total() <= budget) return full;
  // Otherwise the pool is what is left beside the rest (the pool is the only part that shrinks).
  const int64_t B = CacheOptions{}.kv_block_size;
  const int64_t block = KvBytesPerToken(in.target, in.act) * B;
  const int64_t rest = full.total() - full.bytes("KV pool (requests)");
  const int64_t blocks = block > 0 ? std::max<int64_t>(budget - rest, 0) / block : 0;
  const int64_t one_seq = (in.engine.max_ctx + B - 1) / B;
  if (blocks < one_seq) {
    return ResourceExhausted(
        "the memory plan does not fit: {:.1f} MB budget, {:.1f} MB before the KV pool, and one sequence of "
        "max_context {} tokens needs {:.1f} MB of KV. Lower --max-batch, --max-context, --max-k, "
        "--max-prefill-tokens or the prefix cache, or raise --gpu-memory-fraction. The plan at full size:\n{}",
        static_cast<double>(budget) / 1e6, static_cast<double>(rest) / 1e6, in.engine.max_ctx,
        static_cast<double>(one_seq * block) / 1e6, full.Table());
  }
  MemoryPlanInput sized = in;
  sized.engine.kv_cache_tokens = blocks * B;
  SPECD_ASSIGN_OR_RETURN(MemoryPlan p, PlanMemory(sized));
  p.budget = budget;
  return p;
}

}  // namespace specd
