#include "tokenizer/bpe_cache.h"

namespace specd::tokenizer_internal {

bool BpeCache::Lookup(std::string_view key, size_t hash, std::vector<int32_t>& out) const {
  const Shard& s = ShardFor(hash);
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.map.find(key);
  if (it == s.map.end()) return false;
  out.insert(out.end(), it->second.begin(), it->second.end());
  return true;
}

void BpeCache::Insert(std::string_view key, size_t hash, const int32_t* ids, size_t n) {
  Shard& s = ShardFor(hash);
  std::lock_guard<std::mutex> lock(s.mu);
  // Dropping a full shard keeps memory bounded on adversarial input while the working set of
  // ordinary text (common words) refills it at once.
  if (s.map.size() >= kEntriesPerShard) s.map.clear();
  s.map.try_emplace(std::string(key), ids, ids + n);
}

}  // namespace specd::tokenizer_internal
