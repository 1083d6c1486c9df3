// Per-sequence cache slots of one model: KV rows for attention layers, conv window + recurrent
// state for GDN layers, and the speculative scratch (verify log, rollback checkpoint).
//
// Rollback design (docs/DESIGN-NOTES.md, "Verify and rollback"): a verify forward (StateMode::kLog) reads the slot's
// state but writes none of it; it logs, per token and GDN layer, the raw conv row and the
// (k, v, g, beta) of the delta rule. Commit(slot, keep) then replays exactly the accepted prefix
// onto the untouched state with the same step decode uses. Drafts advance their state
// (kUpdateLog) after a checkpoint; their rollback restores the checkpoint and replays.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "checkpoint/config.h"
#include "runtime/backend.h"
#include "specd/limits.h"

namespace specd {

struct CacheOptions {
  int num_slots = 1;
  int64_t max_ctx = 4096;    // tokens per slot (KV rows): the most one slot may hold
  // Paged KV (docs/DESIGN-NOTES.md, "Paged KV cache"): rows per block, and blocks in the pool of
  // each attention layer. 0 blocks = enough for every slot at max_ctx (no slot ever waits).
  int kv_block_size = 16;
  int64_t kv_blocks = 0;
  int log_capacity = kMaxVerifySpan;  // tokens one speculation step may log per slot (k + 1)
  bool checkpoints = false;  // keep a rollback checkpoint per slot (draft models)
};

// What ModelCache::Create allocates for `opt` on a backend whose activation dtype is `act`, by
// part: the memory plan's figures for a cache not created yet (tests check them against Create).
struct CacheBytes {
  int64_t kv = 0;           // the KV pool of every attention layer (with the pad slot's blocks)
  int64_t gdn_state = 0;    // conv windows and recurrent states of every slot
  int64_t verify_log = 0;   // the verify log (raw rows, keys, values, gates of logged tokens)
  int64_t checkpoints = 0;  // rollback checkpoints (caches of draft models)
  int64_t table = 0;        // the block table
  int64_t total() const { return kv + gdn_state + verify_log + checkpoints + table; }
};
CacheBytes PlanCacheBytes(const ModelConfig& cfg, DType act, const CacheOptions& opt);

class ModelCache {
 public:
  static StatusOr<std::unique_ptr<ModelCache>> Create(const ModelConfig& cfg, Backend* backend,
                                                      const CacheOptions& opt);
  ~ModelCache();
  ModelCache(const ModelCache&) = delete;
  ModelCache& operator=(const ModelCache&) = delete;

  // Unique for the process's lifetime: graphs captured over this cache's tensors carry it.
  uint64_t id() const { return id_; }

  const CacheOptions& options() const { return opt_; }
  Backend* backend() const { return backend_; }
  int num_slots() const { return opt_.num_slots; }
  // A slot past the others that no sequence gets: dummy spans that pad a batch to a graph shape
  // run on it (qwen35/graph_padding.h), in verify mode from position 0, at most pad_rows() tokens.
  int pad_slot() const { return opt_.num_slots; }
  int64_t pad_rows() const { return pad_rows_; }

  // Slot lifetime. A new slot starts empty (zero state, length 0).
  StatusOr<int> AllocSlot();
  void FreeSlot(int slot);
  void ResetSlot(int slot);
  bool in_use(int slot) const { return meta_.at(slot).in_use; }
  int slots_in_use() const;

  int64_t length(int slot) const { return meta_.at(slot).length; }
  int log_count(int slot) const { return meta_.at(slot).log_count; }
  bool logging(int slot) const { return meta_.at(slot).logging; }

  // Starts a speculation step on the slot: clears its log; with `checkpoint` also saves the
  // live state for a later rollback (needs CacheOptions::checkpoints).
  Status BeginLog(int slot, bool checkpoint);
  // Ends it: the slot holds exactly the state of having consumed the first `keep` logged tokens
  // after the point of BeginLog. KV length follows.
  Status Commit(int slot, int keep);

  // Called by the forward after a span ran on the slot.
  void Advance(int slot, StateMode mode, int64_t len);

  // ---- paged KV ----
  // Gives each (slot, rows) its blocks for KV rows [0, rows) (a slot's rows past its length too:
  // a verify writes them before the commit decides). All or nothing: when the pool cannot cover
  // every request, ResourceExhausted and no slot changes. Slots must be distinct and in use.
  Status ReserveKv(const std::vector<std::pair<int, int64_t>>& slot_rows);
  // Copies the block table to the backend when it changed (before a forward's ops or its graph).
  void SyncBlockTable();
  int kv_block_size() const { return opt_.kv_block_size; }
  int64_t kv_blocks_total() const { return kv_blocks_total_; }
  int64_t kv_blocks_free() const { return static_cast<int64_t>(free_blocks_.size()); }
  int64_t kv_blocks_max_per_slot() const { return max_blocks_per_slot_; }
  // The slot's blocks, in row order.
  std::vector<int32_t> kv_blocks(int slot) const;
  // ---- shared blocks (the prefix store, cache/prefix_store.h) ----
  // A block may be held by several owners (slots' tables and the prefix store): it returns to the
  // pool when the last lets go. Rows of a shared block are never written: a slot writes only rows
  // at or past its length, and a shared block lies wholly below the length of every slot holding it.
  void RefBlock(int32_t block);
  void UnrefBlock(int32_t block);
  // A fresh block (one reference, the caller's) holding a copy of `src`'s rows in every attention
  // layer; ResourceExhausted when the pool has none free.
  StatusOr<int32_t> CopyBlock(int32_t src);
  // An empty slot (length 0) takes rows [0, rows) from blocks: full blocks shared (`blocks`
  // covers ceil(rows / B) of them), a partial last block copied into a block of its own. Its
  // length becomes `rows`; its GDN state is the caller's business (it must match).
  Status AdoptKvPrefix(int slot, const std::vector<int32_t>& blocks, int64_t rows);
  // K and V bytes of one block over all attention layers (a pool's cost per block).
  int64_t kv_block_bytes() const { return kv_block_bytes_; }
  // Bytes of every tensor Create allocated (PlanCacheBytes predicts it).
  int64_t allocated_bytes() const { return allocated_bytes_; }
  // Rows [0, rows) of one slot in attn()[state] as fp32 [Hkv, rows, D], gathered through the
  // table (tests and diagnostics: the pool's own layout is the backend's business).
  std::vector<float> SlotKvF32(int state, bool values, int slot, int64_t rows) const;

  std::vector<GdnLayerState>& gdn() { return gdn_; }
  std::vector<AttnLayerState>& attn() { return attn_; }
  // For model layer i: its index into gdn() or attn().
  int state_index(int layer) const { return state_index_[layer]; }
  const GdnDims& gdn_dims() const { return gdn_dims_; }

  // Bytes of state per slot: live state, and the speculative scratch (log + checkpoint).
  int64_t live_bytes_per_slot() const { return live_bytes_; }
  int64_t scratch_bytes_per_slot() const { return scratch_bytes_; }

 private:
  struct SlotMeta {
    bool in_use = false;
    int64_t length = 0;
    int64_t base_length = 0;
    int log_count = 0;
    bool logging = false;
    bool has_checkpoint = false;
  };
  ModelCache();
  static StatusOr<std::unique_ptr<ModelCache>> CreateUnchecked(const ModelConfig& cfg, Backend* backend,
                                                               const CacheOptions& opt);
  // Returns the slot's blocks past those that rows [0, rows) need to the pool.
  void TrimKv(int slot, int64_t rows);
  Backend* backend_ = nullptr;
  uint64_t id_ = 0;
  CacheOptions opt_;
  GdnDims gdn_dims_;
  std::vector<GdnLayerState> gdn_;
  std::vector<AttnLayerState> attn_;
  std::vector<int> state_index_;
  std::vector<SlotMeta> meta_;
  int64_t live_bytes_ = 0, scratch_bytes_ = 0, allocated_bytes_ = 0;
  int64_t kv_blocks_total_ = 0, max_blocks_per_slot_ = 0, kv_block_bytes_ = 0, pad_rows_ = 0;
  std::vector<int32_t> free_blocks_;  // a stack: the most recently returned block is reused first
  std::vector<int32_t> block_refs_;   // owners of each pool block (0 = free)
  std::vector<int32_t> table_;        // [slots, max_blocks_per_slot], -1 = none
  std::vector<int32_t> slot_blocks_;  // blocks each slot holds (a prefix of its table row)
  Tensor table_tensor_;               // the backend's copy, shared by every attention layer
  bool table_dirty_ = false;
};

}  // namespace specd
