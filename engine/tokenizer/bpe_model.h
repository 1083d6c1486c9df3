// Byte-level BPE by merge rank, operating directly on raw bytes (the ByteLevel mapping is
// applied once to the vocabulary at load, not to every input).
#pragma once

#include <array>
#include <functional>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tokenizer/bpe_cache.h"
#include "util/status.h"

namespace specd::tokenizer_internal {

class BpeModel {
 public:
  // vocab / merges in ByteLevel-mapped form, as in tokenizer.json.
  static StatusOr<std::unique_ptr<BpeModel>> Build(
      const std::vector<std::pair<std::string, int32_t>>& vocab,
      const std::vector<std::pair<std::string, std::string>>& merges, bool ignore_merges);

  // Appends the ids of one pre-tokenized piece (raw bytes, non-empty). Thread-safe.
  void Encode(std::string_view piece, std::vector<int32_t>& out) const;

 private:
  struct PairSlot {
    uint64_t key;  // (left id << 32) | right id; kEmpty when free
    int32_t rank;
    int32_t merged;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};

  BpeModel() = default;
  void InsertPair(int32_t left, int32_t right, int32_t rank, int32_t merged);
  const PairSlot* FindPair(int32_t left, int32_t right) const;
  void EncodeUncached(std::string_view piece, std::vector<int32_t>& out) const;
  void Merge(std::string_view piece, std::vector<int32_t>& out) const;
  void MergeLong(std::string_view piece, std::vector<int32_t>& out) const;

  std::array<int32_t, 256> byte_id_{};
  // Open addressing: the pair lookup is the hot loop of BPE, and std::unordered_map's node
  // chasing costs several times more here.
  std::vector<PairSlot> pairs_;
  int pair_shift_ = 64;
  bool ignore_merges_ = false;
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  // Raw bytes -> id, only filled for ignore_merges.
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> bytes_to_id_;
  mutable BpeCache cache_;
};

}  // namespace specd::tokenizer_internal
