// Padding a decode/verify/draft batch to one of a few graph shapes. Traffic makes every step's
// composition different (how many sequences, each one's k); a graph per exact shape would be
// captured again and again. Dummy spans on the cache's pad slot (ModelCache::pad_slot) fill a
// batch up to a bucketed number of sequences and tokens, the way vLLM pads to its captured batch
// sizes. A dummy runs in verify mode (kLog) from position 0 of the pad slot: it reads that
// slot's state and writes only its log and KV rows, which nothing else reads, so the real spans'
// results and state are those of the unpadded batch (each row's arithmetic is its own).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace specd {

struct GraphPadding {
  std::vector<int64_t> dummy_lens;  // tokens of each dummy span (empty: the shape is a bucket)
  bool dummy_all_logits = false;    // dummies give a logits row per token (as every real span)
  int64_t tokens = 0, seqs = 0, rows = 0;  // the padded batch
};

// Sequence-count buckets: 1..8, then steps of 4 to 32, of 8 to 64, of 16 to 128, of 32 beyond.
int64_t SeqBucket(int64_t s);
// Token-count buckets: 1..16, then steps of 8 to 64, of 16 to 256, of 32 to 1024, of 64 beyond.
int64_t TokenBucket(int64_t n);

// For S real spans of N tokens in all, the longest L tokens, R logits rows (R must be N, every
// span giving all its rows, or S, every span giving its last), dummies of at most max_dummy_len
// tokens: the padded shape, or nullopt when none fits (the batch then runs at its own shape).
// Never pads across 16 or 64 tokens: the projections' row-invariant forms end there, and a
// padded batch must round like the unpadded one.
std::optional<GraphPadding> PlanGraphPadding(int64_t S, int64_t N, int64_t L, int64_t R, int64_t max_dummy_len);

}  // namespace specd
