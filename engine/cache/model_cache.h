// Per-sequence cache slots of one model: KV rows for attention layers, conv window + recurrent
// state for GDN layers, and the speculative scratch (verify log, rollback checkpoint).
//
// Rollback design (DESIGN.md §3, "replay"): a verify forward (StateMode::kLog) reads the slot's
// state but writes none of it; it logs, per token and GDN layer, the raw conv row and the
// (k, v, g, beta) of the delta rule. Commit(slot, keep) then replays exactly the accepted prefix
// onto the untouched state with the same step decode uses. Drafts advance their state
// (kUpdateLog) after a checkpoint; their rollback restores the checkpoint and replays.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "model/config.h"
#include "runtime/backend.h"

namespace specd {

struct CacheOptions {
  int num_slots = 1;
  int64_t max_ctx = 4096;    // tokens per slot (KV rows)
  int log_capacity = 17;     // tokens one speculation step may log per slot (k + 1 for k <= 16)
  bool checkpoints = false;  // keep a rollback checkpoint per slot (draft models)
};

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
  int num_slots() const { return opt_.num_slots; }

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
  Backend* backend_ = nullptr;
  uint64_t id_ = 0;
  CacheOptions opt_;
  GdnDims gdn_dims_;
  std::vector<GdnLayerState> gdn_;
  std::vector<AttnLayerState> attn_;
  std::vector<int> state_index_;
  std::vector<SlotMeta> meta_;
  int64_t live_bytes_ = 0, scratch_bytes_ = 0;
};

}  // namespace specd
