#include "cache/model_cache.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <stdexcept>

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
  try {
    return CreateUnchecked(cfg, backend, opt);
  } catch (const std::bad_alloc&) {
    backend->ReleaseCachedMemory();
    return ResourceExhausted("not enough {} memory for a cache of {} slots x {} tokens", backend->name(),
                             opt.num_slots, opt.max_ctx);
  }
}

CacheBytes PlanCacheBytes(const ModelConfig& cfg, DType act, const CacheOptions& opt) {
  // The same shapes as CreateUnchecked below, slot count including the pad slot.
  const int64_t B = opt.kv_block_size, max_blocks = (opt.max_ctx + B - 1) / B;
  const int64_t blocks = (opt.kv_blocks > 0 ? opt.kv_blocks : max_blocks * opt.num_slots) +
                         (std::min<int64_t>(opt.log_capacity, max_blocks * B) + B - 1) / B;
  const int64_t S = opt.num_slots + 1, L = opt.log_capacity, a = static_cast<int64_t>(DTypeSize(act));
  const int64_t Hk = cfg.linear_num_key_heads, Hv = cfg.linear_num_value_heads, dk = cfg.linear_key_head_dim,
                dv = cfg.linear_value_head_dim, K = cfg.linear_conv_kernel_dim, C = cfg.conv_dim();
  CacheBytes b;
  b.table = S * max_blocks * 4;
  for (LayerType t : cfg.layer_types) {
    if (t == LayerType::kLinearAttention) {
      const int64_t state = S * (K * C * a + Hv * dk * dv * 4);
      b.gdn_state += state;
      b.verify_log += S * L * (C * a + (Hk * dk + Hv * dv + 2 * Hv) * 4);
      if (opt.checkpoints) b.checkpoints += state;
    } else {
      b.kv += 2 * blocks * cfg.num_key_value_heads * B * cfg.head_dim * a;
    }
  }
  return b;
}

StatusOr<std::unique_ptr<ModelCache>> ModelCache::CreateUnchecked(const ModelConfig& cfg, Backend* backend,
                                                                  const CacheOptions& opt) {
  if (opt.num_slots <= 0) return InvalidArgument("cache needs at least one slot");
  if (opt.max_ctx <= 0) return InvalidArgument("cache max_ctx must be positive");
  if (opt.log_capacity <= 0) return InvalidArgument("cache log capacity must be positive");
  if (opt.kv_block_size <= 0) return InvalidArgument("cache KV block size must be positive");
  if (opt.kv_blocks < 0) return InvalidArgument("cache KV block count must not be negative");
  const int64_t max_blocks = (opt.max_ctx + opt.kv_block_size - 1) / opt.kv_block_size;
  const int64_t num_blocks = opt.kv_blocks > 0 ? opt.kv_blocks : max_blocks * opt.num_slots;
  // The pad slot (index num_slots) owns blocks of its own past the pool, for its dummy spans'
  // KV rows [0, pad_rows): they never compete with real requests for blocks.
  const int64_t pad_rows = std::min<int64_t>(opt.log_capacity, max_blocks * opt.kv_block_size);
  const int64_t pad_blocks = (pad_rows + opt.kv_block_size - 1) / opt.kv_block_size;
  if (num_blocks + pad_blocks > INT32_MAX) {
    return InvalidArgument("cache KV pool of {} blocks: block ids are int32", num_blocks);
  }
  auto c = std::unique_ptr<ModelCache>(new ModelCache());
  auto alloc = [&](DType dt, std::vector<int64_t> shape) {
    Tensor t = backend->Alloc(dt, std::move(shape));
    c->allocated_bytes_ += static_cast<int64_t>(t.nbytes());
    return t;
  };
  c->backend_ = backend;
  c->opt_ = opt;
  c->meta_.resize(opt.num_slots);
  c->kv_blocks_total_ = num_blocks;
  c->max_blocks_per_slot_ = max_blocks;
  c->pad_rows_ = pad_rows;
  c->free_blocks_.reserve(static_cast<size_t>(num_blocks));
  for (int64_t i = num_blocks - 1; i >= 0; --i) c->free_blocks_.push_back(static_cast<int32_t>(i));
  c->block_refs_.assign(static_cast<size_t>(num_blocks), 0);
  const int64_t S = opt.num_slots + 1;  // + the pad slot
  c->table_.assign(static_cast<size_t>(S * max_blocks), -1);
  for (int64_t j = 0; j < pad_blocks; ++j) c->table_[opt.num_slots * max_blocks + j] = static_cast<int32_t>(num_blocks + j);
  c->slot_blocks_.assign(static_cast<size_t>(S), 0);
  c->slot_blocks_[opt.num_slots] = static_cast<int32_t>(pad_blocks);
  c->table_tensor_ = alloc(DType::kI32, {S, max_blocks});
  c->table_dirty_ = true;
  GdnDims d{cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_key_head_dim,
            cfg.linear_value_head_dim, cfg.linear_conv_kernel_dim};
  c->gdn_dims_ = d;
  const int64_t L = opt.log_capacity, C = d.conv_dim();
  const DType act = backend->act_dtype();
  const int64_t act_size = static_cast<int64_t>(DTypeSize(act));
  for (int i = 0; i < cfg.num_hidden_layers; ++i) {
    if (cfg.layer_types[i] == LayerType::kLinearAttention) {
      GdnLayerState g;
      g.conv = alloc(act, {S, d.conv_kernel, C});
      g.rec = alloc(DType::kF32, {S, d.num_v_heads, d.head_k, d.head_v});
      g.log_raw = alloc(act, {S, L, C});
      g.log_k = alloc(DType::kF32, {S, L, d.num_k_heads, d.head_k});
      g.log_v = alloc(DType::kF32, {S, L, d.num_v_heads, d.head_v});
      g.log_g = alloc(DType::kF32, {S, L, d.num_v_heads});
      g.log_beta = alloc(DType::kF32, {S, L, d.num_v_heads});
      c->live_bytes_ += (g.conv.nbytes() + g.rec.nbytes()) / S;
      c->scratch_bytes_ += (g.log_raw.nbytes() + g.log_k.nbytes() + g.log_v.nbytes() +
                            g.log_g.nbytes() + g.log_beta.nbytes()) / S;
      if (opt.checkpoints) {
        g.ckpt_conv = alloc(act, {S, d.conv_kernel, C});
        g.ckpt_rec = alloc(DType::kF32, {S, d.num_v_heads, d.head_k, d.head_v});
        c->scratch_bytes_ += (g.ckpt_conv.nbytes() + g.ckpt_rec.nbytes()) / S;
      }
      c->state_index_.push_back(static_cast<int>(c->gdn_.size()));
      c->gdn_.push_back(std::move(g));
    } else {
      AttnLayerState a;
      a.k = alloc(act, {num_blocks + pad_blocks, cfg.num_key_value_heads, opt.kv_block_size, cfg.head_dim});
      a.v = alloc(act, {num_blocks + pad_blocks, cfg.num_key_value_heads, opt.kv_block_size, cfg.head_dim});
      a.block_table = c->table_tensor_;
      // What a slot holding max_ctx rows uses (the pool may be smaller than slots x that).
      c->live_bytes_ += 2 * int64_t{cfg.num_key_value_heads} * opt.max_ctx * cfg.head_dim * act_size;
      c->kv_block_bytes_ += 2 * int64_t{cfg.num_key_value_heads} * opt.kv_block_size * cfg.head_dim * act_size;
      c->state_index_.push_back(static_cast<int>(c->attn_.size()));
      c->attn_.push_back(std::move(a));
    }
  }
  c->SyncBlockTable();
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

void ModelCache::FreeSlot(int slot) {
  TrimKv(slot, 0);
  meta_.at(slot) = SlotMeta{};
}

void ModelCache::ResetSlot(int slot) {
  TrimKv(slot, 0);
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
    if (!gdn_.empty()) backend_->GdnCommitLayers(gdn_, gdn_dims_, slot, keep, m.has_checkpoint);
    // The replay is the rollback: if the backend failed it, the slot's state is not the
    // accepted prefix's, and the step must fail rather than go on from a wrong state.
    SPECD_RETURN_IF_ERROR(backend_->TakeError());
  }
  m.length = m.base_length + keep;
  // The rejected tail's rows had blocks of their own; those past the kept length go back.
  TrimKv(slot, m.length);
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

Status ModelCache::ReserveKv(const std::vector<std::pair<int, int64_t>>& slot_rows) {
  const int64_t B = opt_.kv_block_size;
  int64_t need = 0;
  for (const auto& [slot, rows] : slot_rows) {
    if (slot < 0 || slot >= num_slots() || !meta_[slot].in_use) {
      return FailedPrecondition("KV reserve: slot {} is not in use", slot);
    }
    if (rows < 0 || rows > max_blocks_per_slot_ * B) {
      return ResourceExhausted("slot {}: {} KV rows exceed the context capacity {}", slot, rows, opt_.max_ctx);
    }
    need += std::max<int64_t>(0, (rows + B - 1) / B - slot_blocks_[slot]);
  }
  if (need > kv_blocks_free()) {
    return ResourceExhausted("KV cache pool exhausted: this forward needs {} more blocks of {} rows, {} of {} are free",
                             need, B, kv_blocks_free(), kv_blocks_total_);
  }
  for (const auto& [slot, rows] : slot_rows) {
    const int64_t want = (rows + B - 1) / B;
    while (slot_blocks_[slot] < want) {
      table_[slot * max_blocks_per_slot_ + slot_blocks_[slot]] = free_blocks_.back();
      block_refs_[free_blocks_.back()] = 1;
      free_blocks_.pop_back();
      ++slot_blocks_[slot];
      table_dirty_ = true;
    }
  }
  return Status::Ok();
}

void ModelCache::TrimKv(int slot, int64_t rows) {
  const int64_t B = opt_.kv_block_size;
  const int64_t keep = (rows + B - 1) / B;
  int32_t& n = slot_blocks_.at(slot);
  while (n > keep) {
    --n;
    int32_t& e = table_[slot * max_blocks_per_slot_ + n];
    // The pad slot's own blocks lie past the pool and are never shared or returned.
    if (e < kv_blocks_total_) UnrefBlock(e);
    e = -1;
    table_dirty_ = true;
  }
}

void ModelCache::RefBlock(int32_t block) { ++block_refs_.at(block); }

void ModelCache::UnrefBlock(int32_t block) {
  int32_t& r = block_refs_.at(block);
  if (r <= 0) throw std::logic_error(fmt::format("KV block {} released more often than held", block));
  if (--r == 0) free_blocks_.push_back(block);
}

StatusOr<int32_t> ModelCache::CopyBlock(int32_t src) {
  if (src < 0 || src >= kv_blocks_total_ || block_refs_[src] <= 0) {
    return InvalidArgument("KV block {} is not a held block of the pool", src);
  }
  if (free_blocks_.empty()) return ResourceExhausted("KV cache pool exhausted: no free block to copy into");
  const int32_t dst = free_blocks_.back();
  free_blocks_.pop_back();
  block_refs_[dst] = 1;
  for (auto& a : attn_) {
    for (Tensor* pool : {&a.k, &a.v}) {
      Tensor to = pool->Rows(dst, 1);
      backend_->CopyRows(pool->Rows(src, 1), to);
    }
  }
  return dst;
}

Status ModelCache::AdoptKvPrefix(int slot, const std::vector<int32_t>& blocks, int64_t rows) {
  const int64_t B = opt_.kv_block_size;
  auto& m = meta_.at(slot);
  if (!m.in_use || m.length != 0 || slot_blocks_[slot] != 0) {
    return FailedPrecondition("slot {} must be in use and empty to adopt a prefix", slot);
  }
  const int64_t n = (rows + B - 1) / B;
  if (rows <= 0 || n > max_blocks_per_slot_ || static_cast<int64_t>(blocks.size()) != n) {
    return InvalidArgument("a prefix of {} rows needs {} blocks (got {})", rows, n, blocks.size());
  }
  const bool partial = rows % B != 0;
  int32_t last = -1;
  if (partial) {
    SPECD_ASSIGN_OR_RETURN(last, CopyBlock(blocks.back()));
  }
  for (int64_t j = 0; j < n; ++j) {
    const bool copied = partial && j == n - 1;
    if (!copied) RefBlock(blocks[j]);
    table_[slot * max_blocks_per_slot_ + j] = copied ? last : blocks[j];
  }
  slot_blocks_[slot] = static_cast<int32_t>(n);
  table_dirty_ = true;
  m.length = rows;
  return Status::Ok();
}

void ModelCache::SyncBlockTable() {
  if (!table_dirty_) return;
  backend_->StageBlockTable(table_, table_tensor_);
  table_dirty_ = false;
}

std::vector<int32_t> ModelCache::kv_blocks(int slot) const {
  const auto* row = table_.data() + int64_t{slot} * max_blocks_per_slot_;
  return std::vector<int32_t>(row, row + slot_blocks_.at(slot));
}

std::vector<float> ModelCache::SlotKvF32(int state, bool values, int slot, int64_t rows) const {
  const AttnLayerState& st = attn_.at(state);
  const Tensor& pool = values ? st.v : st.k;
  const std::vector<float> all = backend_->DownloadF32(pool);
  const int64_t H = pool.dim(1), B = pool.dim(2), D = pool.dim(3);
  if (rows > slot_blocks_.at(slot) * B) {
    throw std::out_of_range(fmt::format("slot {} holds {} KV blocks, not rows [0, {})", slot, slot_blocks_[slot], rows));
  }
  std::vector<float> out(static_cast<size_t>(H * rows * D));
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t j = 0; j < rows; ++j) {
      const int64_t blk = table_[slot * max_blocks_per_slot_ + j / B];
      const float* src = all.data() + ((blk * H + h) * B + j % B) * D;
      std::copy(src, src + D, out.begin() + (h * rows + j) * D);
    }
  }
  return out;
}

}  // namespace specd
