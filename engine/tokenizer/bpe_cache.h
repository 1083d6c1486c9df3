// Piece -> ids memo for BPE, shared by all threads that encode with one tokenizer.
// Sharded so that concurrent Encode calls rarely meet on the same lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace specd::tokenizer_internal {

class BpeCache {
 public:
  static constexpr size_t kShards = 32;
  static constexpr size_t kEntriesPerShard = 4096;

  // Appends the cached ids of `key` to out and returns true on a hit.
  bool Lookup(std::string_view key, size_t hash, std::vector<int32_t>& out) const;
  void Insert(std::string_view key, size_t hash, const int32_t* ids, size_t n);

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct Shard {
    mutable std::mutex mu;
    std::unordered_map<std::string, std::vector<int32_t>, Hash, std::equal_to<>> map;
  };
  Shard& ShardFor(size_t hash) { return shards_[(hash >> 7) % kShards]; }
  const Shard& ShardFor(size_t hash) const { return shards_[(hash >> 7) % kShards]; }

  Shard shards_[kShards];
};

}  // namespace specd::tokenizer_internal
