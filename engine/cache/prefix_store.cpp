#include "cache/prefix_store.h"

#include <algorithm>

namespace specd {

StatusOr<std::unique_ptr<PrefixStore>> PrefixStore::Create(ModelCache* cache, const PrefixStoreOptions& opt) {
  if (opt.max_entries <= 0) return InvalidArgument("the prefix store needs at least one entry");
  if (opt.max_blocks < 0) return InvalidArgument("the prefix store's block budget must not be negative");
  auto p = std::unique_ptr<PrefixStore>(new PrefixStore());
  p->cache_ = cache;
  p->backend_ = cache->backend();
  p->opt_ = opt;
  const int64_t N = opt.max_entries;
  try {
    for (const GdnLayerState& g : cache->gdn()) {
      std::vector<int64_t> cs = g.conv.shape, rs = g.rec.shape;
      cs[0] = N;
      rs[0] = N;
      p->conv_.push_back(p->backend_->Alloc(g.conv.dtype, cs));
      p->rec_.push_back(p->backend_->Alloc(g.rec.dtype, rs));
      p->snapshot_bytes_ += (p->conv_.back().nbytes() + p->rec_.back().nbytes()) / N;
    }
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("not enough {} memory for {} prefix snapshots", p->backend_->name(), N);
  }
  p->nodes_.emplace_back();  // the root
  p->entries_.resize(static_cast<size_t>(N));
  return p;
}

PrefixStore::~PrefixStore() {
  for (const auto& [b, n] : held_) cache_->UnrefBlock(b);
}

// The store takes one pool reference per distinct block, however many entries use it.
void PrefixStore::Hold(int32_t block) {
  if (++held_[block] == 1) {
    cache_->RefBlock(block);
    ++stats_.blocks_held;
  }
}

void PrefixStore::Drop(int32_t block) {
  auto it = held_.find(block);
  if (--it->second == 0) {
    held_.erase(it);
    cache_->UnrefBlock(block);
    --stats_.blocks_held;
  }
}

int64_t PrefixStore::NewBlocks(const std::vector<int32_t>& blocks) const {
  int64_t n = 0;
  for (int32_t b : blocks) n += held_.count(b) == 0;
  return n;
}

const std::shared_ptr<void>* PrefixStore::Entry::companion(const void* owner) const {
  for (const auto& [o, st] : companions) {
    if (o == owner) return &st;
  }
  return nullptr;
}

int PrefixStore::Find(const std::vector<int32_t>& tokens, int64_t len) const {
  if (len <= 0 || len > static_cast<int64_t>(tokens.size())) return -1;
  int n = 0;
  for (int64_t i = 0; i < len && n >= 0; ++i) {
    const auto it = nodes_[n].children.find(tokens[i]);
    n = it == nodes_[n].children.end() ? -1 : it->second;
  }
  return n;
}

bool PrefixStore::Lacks(const std::vector<int32_t>& tokens, int64_t len, const void* owner) const {
  const int n = Find(tokens, len);
  return n > 0 && nodes_[n].entry >= 0 && entries_[nodes_[n].entry].companion(owner) == nullptr;
}

Status PrefixStore::Attach(const std::vector<int32_t>& tokens, int64_t len, const void* owner,
                           std::shared_ptr<void> state) {
  const int n = Find(tokens, len);
  if (n <= 0 || nodes_[n].entry < 0) return NotFound("no stored prefix of {} tokens", len);
  Entry& x = entries_[nodes_[n].entry];
  for (auto& [o, st] : x.companions) {
    if (o == owner) {
      st = std::move(state);
      return Status::Ok();
    }
  }
  x.companions.emplace_back(owner, std::move(state));
  return Status::Ok();
}

PrefixStore::Hit PrefixStore::Lookup(const std::vector<int32_t>& tokens, int64_t max_len, bool whole,
                                     const void* need) {
  ++stats_.lookups;
  stats_.lookup_tokens += static_cast<int64_t>(tokens.size());
  Hit best;
  int n = 0;
  int64_t shared = 0;
  const int64_t limit = std::min<int64_t>(max_len, static_cast<int64_t>(tokens.size()));
  const int64_t T = static_cast<int64_t>(tokens.size());
  for (int64_t i = 0; i < (whole ? T : limit); ++i) {
    const auto it = nodes_[n].children.find(tokens[i]);
    if (it == nodes_[n].children.end()) break;
    n = it->second;
    shared = i + 1;
    const int e = nodes_[n].entry;
    if (e < 0) continue;
    const std::shared_ptr<void>* c = need ? entries_[e].companion(need) : nullptr;
    if (need && c == nullptr) continue;
    if (i < limit) best = Hit{e, i + 1, nullptr, c ? *c : nullptr};
    if (whole && i + 1 == T && !entries_[e].logits.empty()) best = Hit{e, T, &entries_[e].logits, c ? *c : nullptr};
  }
  best.shared = std::max(shared, best.length);
  if (best.length > 0) {
    entries_[best.entry].last_use = ++tick_;
    ++stats_.hits;
    stats_.hit_tokens += best.length;
  }
  return best;
}

Status PrefixStore::Restore(const Hit& hit, int slot) {
  if (hit.entry < 0 || hit.entry >= static_cast<int>(entries_.size()) || !entries_[hit.entry].used ||
      entries_[hit.entry].length != hit.length) {
    return InvalidArgument("prefix entry {} of {} tokens is not stored", hit.entry, hit.length);
  }
  const Entry& e = entries_[hit.entry];
  SPECD_RETURN_IF_ERROR(cache_->AdoptKvPrefix(slot, e.blocks, e.length));
  auto& gdn = cache_->gdn();
  for (size_t l = 0; l < gdn.size(); ++l) {
    Tensor conv = gdn[l].conv.Rows(slot, 1), rec = gdn[l].rec.Rows(slot, 1);
    backend_->CopyRows(conv_[l].Rows(hit.entry, 1), conv);
    backend_->CopyRows(rec_[l].Rows(hit.entry, 1), rec);
  }
  return Status::Ok();
}

int PrefixStore::NewNode(int parent, int32_t token) {
  int n;
  if (!free_nodes_.empty()) {
    n = free_nodes_.back();
    free_nodes_.pop_back();
    nodes_[n] = Node{};
  } else {
    n = static_cast<int>(nodes_.size());
    nodes_.emplace_back();
  }
  nodes_[n].parent = parent;
  nodes_[n].token = token;
  nodes_[parent].children.emplace(token, n);
  return n;
}

void PrefixStore::Prune(int n) {
  while (n > 0 && nodes_[n].entry < 0 && nodes_[n].children.empty()) {
    const int parent = nodes_[n].parent;
    nodes_[parent].children.erase(nodes_[n].token);
    nodes_[n] = Node{};
    free_nodes_.push_back(n);
    n = parent;
  }
}

void PrefixStore::Evict(int e) {
  Entry& x = entries_[e];
  for (int32_t b : x.blocks) Drop(b);
  const int node = x.node;
  nodes_[node].entry = -1;
  x = Entry{};
  ++stats_.evictions;
  --stats_.entries;
  Prune(node);
}

Status PrefixStore::Insert(const std::vector<int32_t>& tokens, int64_t len, int slot, const float* last_logits,
                           int64_t vocab) {
  if (len <= 0 || len > static_cast<int64_t>(tokens.size())) {
    return InvalidArgument("prefix of {} tokens out of {}", len, tokens.size());
  }
  if (cache_->length(slot) != len || cache_->logging(slot)) {
    return FailedPrecondition("slot {} holds {} tokens{}, not a settled prefix of {}", slot, cache_->length(slot),
                              cache_->logging(slot) ? " mid-speculation" : "", len);
  }
  // Already stored?
  int n = Find(tokens, len);
  if (n > 0 && nodes_[n].entry >= 0) {
    Entry& x = entries_[nodes_[n].entry];
    x.last_use = ++tick_;
    if (last_logits != nullptr && x.logits.empty()) x.logits.assign(last_logits, last_logits + vocab);
    return Status::Ok();
  }
  const int64_t B = cache_->kv_block_size();
  const int64_t nb = (len + B - 1) / B;
  const bool partial = len % B != 0;
  if (nb > opt_.max_blocks) return Status::Ok();  // larger than the whole budget: not stored
  std::vector<int32_t> blocks = cache_->kv_blocks(slot);
  if (static_cast<int64_t>(blocks.size()) < nb) return Internal("slot {} holds fewer KV blocks than {} rows", slot, len);
  blocks.resize(static_cast<size_t>(nb));
  if (partial) blocks.pop_back();  // replaced by a copy below (its writer goes on writing it)
  // Room: a free snapshot and the block budget, evicting the least recently used.
  auto lru = [&] {
    int v = -1;
    for (int e = 0; e < static_cast<int>(entries_.size()); ++e) {
      if (entries_[e].used && (v < 0 || entries_[e].last_use < entries_[v].last_use)) v = e;
    }
    return v;
  };
  int slot_e = -1;
  for (int e = 0; e < static_cast<int>(entries_.size()) && slot_e < 0; ++e) {
    if (!entries_[e].used) slot_e = e;
  }
  while (slot_e < 0 || stats_.blocks_held + NewBlocks(blocks) + (partial ? 1 : 0) > opt_.max_blocks) {
    const int v = lru();
    if (v < 0) return Status::Ok();
    Evict(v);
    if (slot_e < 0) slot_e = v;
  }
  for (int32_t b : blocks) Hold(b);
  if (partial) {
    auto copy = cache_->CopyBlock(cache_->kv_blocks(slot)[static_cast<size_t>(nb - 1)]);
    if (!copy.ok()) {  // no free block now: not stored
      for (int32_t b : blocks) Drop(b);
      return Status::Ok();
    }
    // CopyBlock's reference becomes the store's.
    held_[*copy] = 1;
    ++stats_.blocks_held;
    blocks.push_back(*copy);
  }
  auto& gdn = cache_->gdn();
  for (size_t l = 0; l < gdn.size(); ++l) {
    Tensor conv = conv_[l].Rows(slot_e, 1), rec = rec_[l].Rows(slot_e, 1);
    backend_->CopyRows(gdn[l].conv.Rows(slot, 1), conv);
    backend_->CopyRows(gdn[l].rec.Rows(slot, 1), rec);
  }
  std::vector<float> logits;
  if (last_logits != nullptr) logits.assign(last_logits, last_logits + vocab);  // before anything is published
  // The trie path (created after the evictions, which may have pruned parts of it).
  n = 0;
  for (int64_t i = 0; i < len; ++i) {
    const auto it = nodes_[n].children.find(tokens[i]);
    n = it == nodes_[n].children.end() ? NewNode(n, tokens[i]) : it->second;
  }
  Entry& x = entries_[slot_e];
  x.used = true;
  x.node = n;
  x.length = len;
  x.blocks = std::move(blocks);
  x.logits = std::move(logits);
  x.last_use = ++tick_;
  nodes_[n].entry = slot_e;
  ++stats_.entries;
  ++stats_.inserts;
  return Status::Ok();
}

PrefixStoreStats PrefixStore::stats() const { return stats_; }

}  // namespace specd
