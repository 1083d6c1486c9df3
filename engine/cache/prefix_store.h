// The prefix store (docs/prefix-cache.md): the target's state after known token prefixes, so a
// request whose prompt starts with one skips recomputing it. An entry is a prefix of n tokens: the
// KV blocks of rows [0, n) (full blocks shared with the slots that wrote them, refcounted in the
// pool; a partial last block copied, since its writer goes on writing it) and a snapshot of every
// GDN layer's conv window and recurrent state after token n. Entries are found by walking a trie
// of token ids; the longest stored prefix of a prompt wins. Restoring an entry gives a slot
// exactly the state it had when the entry was stored (the same bytes), so a cached request's
// output is the uncached one's.
//
// Beside the target's state an entry may carry companion states, one per owner (a drafter whose
// own state follows the target's, the MTP head: its KV rows and pending hidden row), opaque to the
// store and released with the entry.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cache/model_cache.h"

namespace specd {

struct PrefixStoreOptions {
  int max_entries = 16;      // GDN snapshots held (each: conv window + recurrent state of every GDN layer)
  int64_t max_blocks = 0;    // distinct KV blocks the store may hold (one shared by several entries counts once)
};

struct PrefixStoreStats {
  int64_t lookups = 0, lookup_tokens = 0;  // prompts looked up, and their tokens
  int64_t hits = 0, hit_tokens = 0;        // prompts that found a prefix, and its tokens
  int64_t inserts = 0, evictions = 0;
  int entries = 0;
  int64_t blocks_held = 0;
};

class PrefixStore {
 public:
  static StatusOr<std::unique_ptr<PrefixStore>> Create(ModelCache* cache, const PrefixStoreOptions& opt);
  ~PrefixStore();
  PrefixStore(const PrefixStore&) = delete;
  PrefixStore& operator=(const PrefixStore&) = delete;

  struct Hit {
    int entry = -1;
    int64_t length = 0;                         // 0: nothing found
    const std::vector<float>* logits = nullptr;  // the whole of `tokens`, with its last position's logits
    std::shared_ptr<void> companion;             // the companion state of Lookup's `need`, if asked
    // The longest prefix `tokens` shares with any stored prefix's path (>= length): where this
    // prompt leaves what is known. An entry stored there serves the next prompt that leaves at
    // the same token (a system prompt shared by many users, whatever its length).
    int64_t shared = 0;
  };
  // The longest stored prefix of `tokens` of at most `max_len` tokens; or, with `whole`, all of
  // `tokens` when that entry keeps its last position's logits (so nothing needs computing). With
  // `need`, only entries that carry that owner's companion state.
  Hit Lookup(const std::vector<int32_t>& tokens, int64_t max_len, bool whole = false, const void* need = nullptr);
  // Gives the empty slot the entry's state: its KV rows and GDN state, length = hit.length.
  Status Restore(const Hit& hit, int slot);
  // Stores the slot's current state as the prefix tokens[0, len) (the slot must hold exactly
  // len tokens, not mid-speculation). Already stored: refreshed in the LRU order only. Evicts the
  // least recently used entries for room; a prefix that cannot fit the budget is not stored.
  // `last_logits` (V floats, or null): the logits of position len - 1, kept with the entry so that
  // a later request with exactly these tokens as its prompt computes nothing.
  Status Insert(const std::vector<int32_t>& tokens, int64_t len, int slot, const float* last_logits = nullptr,
                int64_t vocab = 0);

  // Whether the entry of exactly tokens[0, len) exists and lacks `owner`'s companion state.
  bool Lacks(const std::vector<int32_t>& tokens, int64_t len, const void* owner) const;
  // Gives that entry `owner`'s companion state (kNotFound when there is no such entry; an
  // existing one of the same owner is replaced).
  Status Attach(const std::vector<int32_t>& tokens, int64_t len, const void* owner, std::shared_ptr<void> state);

  // Bytes of one entry's GDN snapshot, and of the whole snapshot pool.
  int64_t snapshot_bytes() const { return snapshot_bytes_; }
  int64_t pool_bytes() const { return snapshot_bytes_ * opt_.max_entries; }
  const PrefixStoreOptions& options() const { return opt_; }
  PrefixStoreStats stats() const;

 private:
  struct Node {
    std::unordered_map<int32_t, int> children;
    int parent = -1;
    int32_t token = 0;
    int entry = -1;
  };
  struct Entry {
    bool used = false;
    int node = -1;
    int64_t length = 0;
    std::vector<int32_t> blocks;  // ceil(length / B): shared full blocks, then the store's copy of a partial one
    std::vector<float> logits;    // position length - 1's logits, when stored at a prompt's end
    std::vector<std::pair<const void*, std::shared_ptr<void>>> companions;
    uint64_t last_use = 0;
    const std::shared_ptr<void>* companion(const void* owner) const;
  };
  PrefixStore() = default;
  int NewNode(int parent, int32_t token);
  // The node of exactly tokens[0, len), or -1.
  int Find(const std::vector<int32_t>& tokens, int64_t len) const;
  void Evict(int e);
  // Drops nodes that lead to no entry, from `n` up.
  void Prune(int n);
  void Hold(int32_t block);
  void Drop(int32_t block);
  // Blocks of `blocks` the store does not hold yet.
  int64_t NewBlocks(const std::vector<int32_t>& blocks) const;
  ModelCache* cache_ = nullptr;
  Backend* backend_ = nullptr;
  PrefixStoreOptions opt_;
  std::vector<Tensor> conv_, rec_;  // per GDN layer: [max_entries, ...] snapshots
  std::vector<Node> nodes_;         // nodes_[0] = the root (the empty prefix)
  std::vector<int> free_nodes_;
  std::vector<Entry> entries_;
  std::unordered_map<int32_t, int> held_;  // the store's references per block (one pool reference each)
  uint64_t tick_ = 0;
  int64_t snapshot_bytes_ = 0;
  PrefixStoreStats stats_;
};

}  // namespace specd
