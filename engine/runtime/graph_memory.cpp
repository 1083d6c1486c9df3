#include "runtime/graph_memory.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iterator>

namespace specd {

GraphArena::GraphArena(ChunkAlloc alloc, ChunkFree free, size_t min_chunk)
    : alloc_(std::move(alloc)), free_(std::move(free)), min_chunk_(min_chunk) {}

GraphArena::~GraphArena() {
  for (auto& c : chunks_) free_(c.base);
}

void* GraphArena::TakeFrom(Chunk& c, size_t bytes) {
  for (auto it = c.free.begin(); it != c.free.end(); ++it) {
    if (it->second < bytes) continue;
    const size_t off = it->first, len = it->second;
    c.free.erase(it);
    if (len > bytes) c.free.emplace(off + bytes, len - bytes);
    c.live += bytes;
    return c.base + off;
  }
  return nullptr;
}

void* GraphArena::Get(size_t bytes) {
  bytes = std::max<size_t>(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
  for (size_t i = 0; i < chunks_.size(); ++i) {
    if (void* p = TakeFrom(chunks_[i], bytes)) {
      used_[p] = {i, bytes};
      live_ += bytes;
      peak_live_ = std::max(peak_live_, live_);
      return p;
    }
  }
  // Doubling keeps the number of chunks (and of first-fit scans) logarithmic in the peak.
  const size_t size = std::max({bytes, reserved_, min_chunk_});
  void* base = alloc_(size);
  if (base == nullptr) return nullptr;
  Chunk c;
  c.base = static_cast<char*>(base);
  c.size = size;
  c.free.emplace(0, size);
  chunks_.push_back(std::move(c));
  reserved_ += size;
  void* p = TakeFrom(chunks_.back(), bytes);
  used_[p] = {chunks_.size() - 1, bytes};
  live_ += bytes;
  peak_live_ = std::max(peak_live_, live_);
  return p;
}

void GraphArena::Put(void* p) {
  auto u = used_.find(p);
  if (u == used_.end()) std::abort();  // not ours: a bookkeeping bug, never a user error
  const auto [ci, len] = u->second;
  used_.erase(u);
  Chunk& c = chunks_[ci];
  size_t off = static_cast<size_t>(static_cast<char*>(p) - c.base), n = len;
  // Merge with the free ranges on either side.
  auto next = c.free.lower_bound(off);
  if (next != c.free.end() && next->first == off + n) {
    n += next->second;
    next = c.free.erase(next);
  }
  if (next != c.free.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == off) {
      off = prev->first;
      n += prev->second;
      c.free.erase(prev);
    }
  }
  c.free.emplace(off, n);
  c.live -= len;
  live_ -= len;
}

void GraphArena::ReleaseUnused() {
  // Chunk indices are stored in used_: rebuild them for the chunks that stay.
  std::vector<Chunk> keep;
  std::vector<size_t> new_index(chunks_.size(), SIZE_MAX);
  for (size_t i = 0; i < chunks_.size(); ++i) {
    if (chunks_[i].live == 0) {
      free_(chunks_[i].base);
      reserved_ -= chunks_[i].size;
      continue;
    }
    new_index[i] = keep.size();
    keep.push_back(std::move(chunks_[i]));
  }
  chunks_ = std::move(keep);
  for (auto& [p, where] : used_) where.first = new_index[where.first];
  peak_live_ = live_;
}

bool GraphKeeper::ShouldCapture(const std::string& key) {
  if (limit_ <= 0) return false;
  if (seen_.size() > 4096) seen_.clear();
  int& n = seen_[key];
  ++n;
  if (n < capture_after_) return false;
  seen_.erase(key);
  return true;
}

std::vector<std::string> GraphKeeper::Added(const std::string& key) {
  Removed(key);
  order_.push_front(key);
  where_[key] = order_.begin();
  std::vector<std::string> drop;
  while (static_cast<int>(order_.size()) > std::max(limit_, 0)) {
    drop.push_back(order_.back());
    where_.erase(order_.back());
    order_.pop_back();
  }
  return drop;
}

void GraphKeeper::Used(const std::string& key) {
  auto it = where_.find(key);
  if (it == where_.end()) return;
  order_.splice(order_.begin(), order_, it->second);
}

void GraphKeeper::Removed(const std::string& key) {
  auto it = where_.find(key);
  if (it == where_.end()) return;
  order_.erase(it->second);
  where_.erase(it);
}

}  // namespace specd
