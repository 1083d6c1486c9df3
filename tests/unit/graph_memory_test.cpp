// The host-side rules that bound graph memory (runtime/graph_memory.h) and the padding of batches
// to graph shapes (qwen35/graph_padding.h): the CUDA backend relies on both.
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include "qwen35/graph_padding.h"
#include "runtime/graph_memory.h"

namespace specd {
namespace {

// Chunks from the host heap, with a budget: a failing "device".
struct FakeDevice {
  size_t budget = SIZE_MAX, in_use = 0;
  int allocs = 0, frees = 0;
  std::vector<std::pair<char*, size_t>> chunks;
  GraphArena::ChunkAlloc Alloc() {
    return [this](size_t n) -> void* {
      if (in_use + n > budget) return nullptr;
      ++allocs;
      in_use += n;
      char* p = static_cast<char*>(std::malloc(n));
      chunks.emplace_back(p, n);
      return p;
    };
  }
  GraphArena::ChunkFree Free() {
    return [this](void* p) {
      ++frees;
      for (auto it = chunks.begin(); it != chunks.end(); ++it) {
        if (it->first == p) {
          in_use -= it->second;
          chunks.erase(it);
          break;
        }
      }
      std::free(p);
    };
  }
};

TEST(GraphArena, ReusesFreedBlocksAndMergesNeighbours) {
  FakeDevice dev;
  GraphArena a(dev.Alloc(), dev.Free(), 4096);
  void* x = a.Get(1000);
  void* y = a.Get(1000);
  void* z = a.Get(1000);
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(a.chunks(), 1u);
  EXPECT_EQ(a.live_bytes(), 3u * 1024);  // 256-byte granules
  a.Put(x);
  a.Put(y);
  // x and y merged: a 2048-byte block fits where they were, without a new chunk.
  void* w = a.Get(2000);
  EXPECT_EQ(w, x);
  EXPECT_EQ(a.chunks(), 1u);
  a.Put(w);
  a.Put(z);
  EXPECT_EQ(a.live_bytes(), 0u);
  // Everything merged back into one range: the whole chunk is one block again.
  EXPECT_EQ(a.Get(4096), x);
  EXPECT_EQ(dev.allocs, 1);
}

TEST(GraphArena, GrowsByDoublingAndSizeFollowsThePeakNotTheNumberOfUses) {
  FakeDevice dev;
  GraphArena a(dev.Alloc(), dev.Free(), 1 << 12);
  std::mt19937 rng(7);
  // Many "captures" of varied shapes, each allocating and freeing in its own order: the arena
  // must stay within a small multiple of the largest capture's live peak.
  size_t worst_peak = 0;
  for (int cap = 0; cap < 500; ++cap) {
    std::vector<void*> live;
    size_t now = 0, peak = 0;
    const int n = 5 + static_cast<int>(rng() % 30);
    for (int i = 0; i < n; ++i) {
      const size_t bytes = 256 * (1 + rng() % 64);
      void* p = a.Get(bytes);
      ASSERT_NE(p, nullptr);
      live.push_back(p);
      now += bytes;
      peak = std::max(peak, now);
      if (rng() % 3 == 0 && !live.empty()) {  // a temporary dies mid-capture
        const size_t k = rng() % live.size();
        a.Put(live[k]);
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
        now = a.live_bytes();
      }
    }
    for (void* p : live) a.Put(p);
    worst_peak = std::max(worst_peak, peak);
  }
  EXPECT_EQ(a.live_bytes(), 0u);
  EXPECT_LE(a.reserved_bytes(), 4 * worst_peak) << "chunks " << a.chunks();
  EXPECT_LE(a.chunks(), 8u);
}

TEST(GraphArena, FailedGrowthIsNullAndUnusedChunksGoBack) {
  FakeDevice dev;
  dev.budget = 8192;
  GraphArena a(dev.Alloc(), dev.Free(), 4096);
  void* x = a.Get(4096);
  ASSERT_NE(x, nullptr);
  void* y = a.Get(4096);  // second chunk, the budget's end
  ASSERT_NE(y, nullptr);
  EXPECT_EQ(a.Get(256), nullptr);  // no room, no chunk: the caller reports the failure
  EXPECT_EQ(a.reserved_bytes(), 8192u);
  a.Put(y);
  a.ReleaseUnused();  // the chunk of y holds nothing live now
  EXPECT_EQ(a.chunks(), 1u);
  EXPECT_EQ(dev.in_use, 4096u);
  a.Put(x);  // still known after the chunk list was rebuilt
  EXPECT_EQ(a.live_bytes(), 0u);
  EXPECT_NE(a.Get(1024), nullptr);
}

TEST(GraphKeeper, CapturesOnTheNthSightingAndDropsTheLeastRecentlyUsed) {
  GraphKeeper k(3, 2);
  EXPECT_FALSE(k.ShouldCapture("a"));  // first sighting: run op by op
  EXPECT_TRUE(k.ShouldCapture("a"));
  EXPECT_TRUE(k.Added("a").empty());
  for (const char* key : {"b", "c"}) {
    EXPECT_FALSE(k.ShouldCapture(key));
    EXPECT_TRUE(k.ShouldCapture(key));
    EXPECT_TRUE(k.Added(key).empty());
  }
  k.Used("a");  // a is now the most recent; b the least
  EXPECT_FALSE(k.ShouldCapture("d"));
  EXPECT_TRUE(k.ShouldCapture("d"));
  EXPECT_EQ(k.Added("d"), std::vector<std::string>{"b"});
  EXPECT_EQ(k.size(), 3u);
  k.set_limit(0);
  EXPECT_FALSE(k.ShouldCapture("e"));
  EXPECT_FALSE(k.ShouldCapture("e"));
  GraphKeeper once(2, 1);
  EXPECT_TRUE(once.ShouldCapture("x"));
}

TEST(GraphPadding, BucketsAreMonotoneAndCoverEveryCount) {
  for (int64_t s = 1; s <= 600; ++s) {
    EXPECT_GE(SeqBucket(s), s);
    EXPECT_EQ(SeqBucket(SeqBucket(s)), SeqBucket(s)) << s;
    EXPECT_GE(TokenBucket(s), s);
    EXPECT_EQ(TokenBucket(TokenBucket(s)), TokenBucket(s)) << s;
    if (s > 1) {
      EXPECT_GE(SeqBucket(s), SeqBucket(s - 1));
    }
    // At most a quarter more sequences past 8, a sixth more tokens past 16 (past 64, a quarter).
    if (s > 8) {
      EXPECT_LE(SeqBucket(s) * 4, s * 5 + 16) << s;
    }
  }
}

// Every plan is a valid padding of the batch it was made for, and the padded shapes are few.
TEST(GraphPadding, PlansAreValidAndFew) {
  std::set<std::tuple<int64_t, int64_t, int64_t, int64_t>> exact, padded;
  int64_t planned = 0, total = 0;
  for (int64_t S = 1; S <= 64; ++S) {
    for (int64_t L = 1; L <= 9; ++L) {
      for (int64_t N = S + L - 1; N <= S * L; ++N) {  // some span has L tokens
        for (bool all_rows : {true, false}) {
          const int64_t R = all_rows ? N : S;
          ++total;
          exact.insert({S, N, L, R});
          const auto p = PlanGraphPadding(S, N, L, R, 9);
          if (!p) {
            padded.insert({S, N, L, R});
            continue;
          }
          ++planned;
          const int64_t d = static_cast<int64_t>(p->dummy_lens.size());
          ASSERT_EQ(p->seqs, S + d);
          ASSERT_EQ(p->seqs, SeqBucket(p->seqs)) << "S " << S << " N " << N;
          ASSERT_EQ(p->tokens, TokenBucket(p->tokens)) << "S " << S << " N " << N;
          int64_t t = 0;
          for (int64_t len : p->dummy_lens) {
            ASSERT_GE(len, 1);
            ASSERT_LE(len, L);  // the longest span, so the batch keeps its max_len
            t += len;
          }
          ASSERT_EQ(p->tokens, N + t);
          ASSERT_EQ(p->rows, all_rows ? p->tokens : p->seqs);
          for (int64_t bound : {16, 64}) ASSERT_FALSE(N <= bound && p->tokens > bound) << "S " << S << " N " << N;
          padded.insert({p->seqs, p->tokens, L, p->rows});
        }
      }
    }
  }
  // Most batches pad, and to far fewer shapes than there are compositions.
  EXPECT_GT(planned * 10, total * 9) << planned << " of " << total;
  EXPECT_LT(padded.size() * 3, exact.size()) << padded.size() << " padded shapes for " << exact.size();
}

TEST(GraphPadding, Examples) {
  // 9 decode tokens: 3 one-token dummies make 12 sequences of one token.
  auto p = PlanGraphPadding(9, 9, 1, 9, 17);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->dummy_lens, (std::vector<int64_t>{1, 1, 1}));
  EXPECT_EQ(p->rows, 12);
  EXPECT_TRUE(p->dummy_all_logits);
  // A bucket already: nothing to add.
  p = PlanGraphPadding(8, 40, 5, 40, 17);
  ASSERT_TRUE(p);
  EXPECT_TRUE(p->dummy_lens.empty());
  // 12 verify spans of 5 (60 tokens): 4 dummies reach 16 sequences and 64 tokens.
  p = PlanGraphPadding(12, 60, 5, 60, 17);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->seqs, 16);
  EXPECT_EQ(p->tokens, 64);
  // 10 sequences of 15 tokens cannot pad without crossing 16 rows: they run at their own shape.
  EXPECT_FALSE(PlanGraphPadding(10, 15, 6, 15, 17));
  // Mixed rows (some spans all, some last only): their own shape.
  EXPECT_FALSE(PlanGraphPadding(3, 7, 5, 6, 17));
  // Dummies cannot be longer than the pad slot allows.
  p = PlanGraphPadding(9, 45, 5, 45, 1);
  ASSERT_TRUE(p);
  for (int64_t len : p->dummy_lens) EXPECT_EQ(len, 1);
}

}  // namespace
}  // namespace specd
