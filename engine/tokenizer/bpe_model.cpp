#include "tokenizer/bpe_model.h"

#include <bit>
#include <climits>
#include <cstring>
#include <queue>

#include "tokenizer/byte_level.h"

namespace specd::tokenizer_internal {
namespace {

// Pieces up to this many bytes are merged with a flat O(n^2) scan, which beats a heap for the
// short words that make up almost all text; longer pieces (whitespace runs, minified data)
// use the heap so that they stay O(n log n).
constexpr size_t kShortPiece = 64;
// Longer pieces are rare and seldom repeat; caching them would only churn the cache.
constexpr size_t kMaxCachedPiece = 128;

size_t NextPow2(size_t v) {
  size_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

}  // namespace

StatusOr<std::unique_ptr<BpeModel>> BpeModel::Build(
    const std::vector<std::pair<std::string, int32_t>>& vocab,
    const std::vector<std::pair<std::string, std::string>>& merges, bool ignore_merges) {
  std::unique_ptr<BpeModel> m(new BpeModel());
  m->ignore_merges_ = ignore_merges;

  std::unordered_map<std::string_view, int32_t> by_string;
  by_string.reserve(vocab.size());
  for (const auto& [tok, id] : vocab) {
    if (id < 0) return InvalidArgument("tokenizer.json: negative id {} for '{}'", id, tok);
    by_string.emplace(tok, id);
  }

  for (int b = 0; b < 256; ++b) {
    auto it = by_string.find(byte_level::ByteToChar(static_cast<uint8_t>(b)));
    if (it == by_string.end()) {
      // HF would silently drop such bytes (no unk, no byte fallback); refuse instead.
      return Unimplemented("tokenizer.json: vocab has no ByteLevel token for byte 0x{:02X}", b);
    }
    m->byte_id_[b] = it->second;
  }

  const size_t cap = NextPow2(merges.size() * 2 + 16);
  m->pairs_.assign(cap, PairSlot{kEmpty, 0, 0});
  m->pair_shift_ = 64 - std::countr_zero(cap);
  std::string joined;
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto& [a, b] = merges[r];
    joined.assign(a).append(b);
    auto ia = by_string.find(a), ib = by_string.find(b), ij = by_string.find(joined);
    if (ia == by_string.end() || ib == by_string.end() || ij == by_string.end()) {
      return InvalidArgument("tokenizer.json: merge {} ('{}' '{}') uses a token missing from vocab",
                             r, a, b);
    }
    m->InsertPair(ia->second, ib->second, static_cast<int32_t>(r), ij->second);
  }

  if (ignore_merges) {
    for (const auto& [tok, id] : vocab) {
      if (auto bytes = byte_level::CharsToBytes(tok)) m->bytes_to_id_.emplace(std::move(*bytes), id);
    }
  }
  return m;
}

void BpeModel::InsertPair(int32_t left, int32_t right, int32_t rank, int32_t merged) {
  const uint64_t key = (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
  size_t i = (key * 0x9E3779B97F4A7C15ULL) >> pair_shift_;
  const size_t mask = pairs_.size() - 1;
  while (pairs_[i].key != kEmpty && pairs_[i].key != key) i = (i + 1) & mask;
  // A repeated pair keeps the later rank, as HF's HashMap collect does.
  pairs_[i] = PairSlot{key, rank, merged};
}

const BpeModel::PairSlot* BpeModel::FindPair(int32_t left, int32_t right) const {
  const uint64_t key = (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
  size_t i = (key * 0x9E3779B97F4A7C15ULL) >> pair_shift_;
  const size_t mask = pairs_.size() - 1;
  while (true) {
    const PairSlot& s = pairs_[i];
    if (s.key == key) return &s;
    if (s.key == kEmpty) return nullptr;
    i = (i + 1) & mask;
  }
}

void BpeModel::Encode(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.size() == 1) {
    out.push_back(byte_id_[static_cast<uint8_t>(piece[0])]);
    return;
  }
  if (piece.size() > kMaxCachedPiece) {
    EncodeUncached(piece, out);
    return;
  }
  const size_t hash = std::hash<std::string_view>{}(piece);
  if (cache_.Lookup(piece, hash, out)) return;
  const size_t before = out.size();
  EncodeUncached(piece, out);
  cache_.Insert(piece, hash, out.data() + before, out.size() - before);
}

void BpeModel::EncodeUncached(std::string_view piece, std::vector<int32_t>& out) const {
  // ignore_merges: a piece that is itself a vocabulary entry is that entry, even when no
  // merge sequence reaches it (tiktoken-derived vocabularies have such tokens).
  if (ignore_merges_) {
    if (auto it = bytes_to_id_.find(piece); it != bytes_to_id_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (piece.size() <= kShortPiece) {
    Merge(piece, out);
  } else {
    MergeLong(piece, out);
  }
}

void BpeModel::Merge(std::string_view piece, std::vector<int32_t>& out) const {
  int32_t ids[kShortPiece];
  int32_t ranks[kShortPiece];  // ranks[i]: rank of pair (ids[i], ids[i+1]); INT_MAX = none
  int32_t merged[kShortPiece];
  size_t n = piece.size();
  for (size_t i = 0; i < n; ++i) ids[i] = byte_id_[static_cast<uint8_t>(piece[i])];
  auto rank_at = [&](size_t i) {
    const PairSlot* s = FindPair(ids[i], ids[i + 1]);
    ranks[i] = s ? s->rank : INT_MAX;
    merged[i] = s ? s->merged : -1;
  };
  for (size_t i = 0; i + 1 < n; ++i) rank_at(i);
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i) {
      if (ranks[i] < ranks[best]) best = i;  // strict: the leftmost of equal ranks wins
    }
    if (ranks[best] == INT_MAX) break;
    ids[best] = merged[best];
    std::memmove(ids + best + 1, ids + best + 2, (n - best - 2) * sizeof(int32_t));
    std::memmove(ranks + best, ranks + best + 1, (n - best - 2) * sizeof(int32_t));
    std::memmove(merged + best, merged + best + 1, (n - best - 2) * sizeof(int32_t));
    --n;
    if (best > 0) rank_at(best - 1);
    if (best + 1 < n) rank_at(best);
  }
  out.insert(out.end(), ids, ids + n);
}

void BpeModel::MergeLong(std::string_view piece, std::vector<int32_t>& out) const {
  struct Sym {
    int32_t id, prev, next;
  };
  struct Cand {
    int32_t rank, pos, left, right, merged;
    // Min-heap on (rank, pos): the same order in which HF applies merges.
    bool operator<(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  const int32_t n = static_cast<int32_t>(piece.size());
  std::vector<Sym> syms(n);
  for (int32_t i = 0; i < n; ++i) {
    syms[i] = Sym{byte_id_[static_cast<uint8_t>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1};
  }
  std::priority_queue<Cand> heap;
  auto push = [&](int32_t pos) {
    if (pos < 0 || syms[pos].next < 0) return;
    const Sym& l = syms[pos];
    const Sym& r = syms[l.next];
    if (const PairSlot* s = FindPair(l.id, r.id)) heap.push(Cand{s->rank, pos, l.id, r.id, s->merged});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    Sym& l = syms[c.pos];
    // Stale entries: a neighbour was merged away or changed since this pair was queued.
    if (l.id != c.left || l.next < 0 || syms[l.next].id != c.right) continue;
    const int32_t gone = l.next;
    l.id = c.merged;
    l.next = syms[gone].next;
    if (l.next >= 0) syms[l.next].prev = c.pos;
    syms[gone].id = -1;
    push(l.prev);
    push(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
}

}  // namespace specd::tokenizer_internal
