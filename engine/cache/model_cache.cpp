#include "cache/model_cache.h"

#include <atomic>

namespace specd {

namespace {
std::atomic<uint64_t> g_next_cache_id{1};
}  // namespace

ModelCache::ModelCache() : id_(g_next_cache_id++) {}

ModelCache::~ModelCache() {
  if (backend_ != nullptr) backend_->DropGraphs(fmt::format(":c{}:", id_));
}

StatusOr<std::unique_ptr<ModelCache>> ModelCache::Create(const ModelConfig& cfg, Backend* backend,
                                                         const CacheOptions& opt) {
  if (opt.num_slots <= 0) return InvalidArgument("cache needs at least one slot");
  if (opt.max_ctx <= 0) return InvalidArgument("cache max_ctx must be positive");
  if (opt.log_capacity <= 0) return InvalidArgument("cache log capacity must be positive");
  auto c = std::unique_ptr<ModelCache>(new ModelCache());
  c->backend_ = backend;
  c->opt_ = opt;
  c->meta_.resize(opt.num_slots);
  GdnDims d{cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_key_head_dim,
            cfg.linear_value_head_dim, cfg.linear_conv_kernel_dim};
  c->gdn_dims_ = d;
  const int64_t S = opt.num_slots, L = opt.log_capacity, C = d.conv_dim();
  const DType act = backend->act_dtype();
  const int64_t act_size = static_cast<int64_t>(DTypeSize(act));
  for (int i = 0; i < cfg.num_hidden_layers; ++i) {
    if (cfg.layer_types[i] == LayerType::kLinearAttention) {
      GdnLayerState g;
      g.conv = backend->Alloc(act, {S, d.conv_kernel, C});
      g.rec = backend->Alloc(DType::kF32, {S, d.num_v_heads, d.head_k, d.head_v});
      g.log_raw = backend->Alloc(act, {S, L, C});
      g.log_k = backend->Alloc(DType::kF32, {S, L, d.num_k_heads, d.head_k});
      g.log_v = backend->Alloc(DType::kF32, {S, L, d.num_v_heads, d.head_v});
      g.log_g = backend->Alloc(DType::kF32, {S, L, d.num_v_heads});
      g.log_beta = backend->Alloc(DType::kF32, {S, L, d.num_v_heads});
      c->live_bytes_ += (g.conv.nbytes() + g.rec.nbytes()) / S;
      c->scratch_bytes_ += (g.log_raw.nbytes() + g.log_k.nbytes() + g.log_v.nbytes() +
                            g.log_g.nbytes() + g.log_beta.nbytes()) / S;
      if (opt.checkpoints) {
        g.ckpt_conv = backend->Alloc(act, {S, d.conv_kernel, C});
        g.ckpt_rec = backend->Alloc(DType::kF32, {S, d.num_v_heads, d.head_k, d.head_v});
        c->scratch_bytes_ += (g.ckpt_conv.nbytes() + g.ckpt_rec.nbytes()) / S;
      }
      c->state_index_.push_back(static_cast<int>(c->gdn_.size()));
      c->gdn_.push_back(std::move(g));
    } else {
      AttnLayerState a;
      a.k = backend->Alloc(act, {S, cfg.num_key_value_heads, opt.max_ctx, cfg.head_dim});
      a.v = backend->Alloc(act, {S, cfg.num_key_value_heads, opt.max_ctx, cfg.head_dim});
      c->live_bytes_ += 2 * int64_t{cfg.num_key_value_heads} * opt.max_ctx * cfg.head_dim * act_size;
      c->state_index_.push_back(static_cast<int>(c->attn_.size()));
      c->attn_.push_back(std::move(a));
    }
  }
  return c;
}

StatusOr<int> ModelCache::AllocSlot() {
  for (int s = 0; s < num_slots(); ++s) {
    if (!meta_[s].in_use) {
      ResetSlot(s);
      meta_[s].in_use = true;
      return s;
    }
  }
  return ResourceExhausted("all {} cache slots are in use", num_slots());
}

void ModelCache::FreeSlot(int slot) { meta_.at(slot) = SlotMeta{}; }

void ModelCache::ResetSlot(int slot) {
  for (auto& g : gdn_) backend_->GdnReset(g, slot);
  const bool used = meta_.at(slot).in_use;
  meta_[slot] = SlotMeta{};
  meta_[slot].in_use = used;
}

int ModelCache::slots_in_use() const {
  int n = 0;
  for (const auto& m : meta_) n += m.in_use;
  return n;
}

Status ModelCache::BeginLog(int slot, bool checkpoint) {
  auto& m = meta_.at(slot);
  if (!m.in_use) return FailedPrecondition("slot {} is not in use", slot);
  if (checkpoint && !opt_.checkpoints) return FailedPrecondition("this cache keeps no checkpoints");
  m.logging = true;
  m.log_count = 0;
  m.base_length = m.length;
  m.has_checkpoint = checkpoint;
  if (checkpoint) {
    for (auto& g : gdn_) backend_->GdnCheckpoint(g, slot);
  }
  return Status::Ok();
}

Status ModelCache::Commit(int slot, int keep) {
  auto& m = meta_.at(slot);
  if (!m.logging) return FailedPrecondition("slot {} has no speculation step to commit", slot);
  if (keep < 0 || keep > m.log_count) {
    return InvalidArgument("commit of {} tokens but slot {} logged {}", keep, slot, m.log_count);
  }
  // Drafts that advanced their state and are all kept need no replay.
  const bool nothing_to_undo = m.has_checkpoint && keep == m.log_count;
  if (!nothing_to_undo) {
    for (auto& g : gdn_) backend_->GdnCommit(g, gdn_dims_, slot, keep, m.has_checkpoint);
  }
  m.length = m.base_length + keep;
  m.logging = false;
  m.log_count = 0;
  m.has_checkpoint = false;
  return Status::Ok();
}

void ModelCache::Advance(int slot, StateMode mode, int64_t len) {
  auto& m = meta_.at(slot);
  if (WritesState(mode)) m.length += len;
  if (WritesLog(mode)) m.log_count += static_cast<int>(len);
}

}  // namespace specd
