#include "qwen35/graph_padding.h"

#include <algorithm>

namespace specd {
namespace {

int64_t RoundUp(int64_t v, int64_t step) { return (v + step - 1) / step * step; }

// The row counts where the projections change form (skinny_gemm.cu: 16 rows; the batch-invariant
// wide form: 64).
bool CrossesFormBoundary(int64_t from, int64_t to) {
  for (int64_t b : {16, 64}) {
    if (from <= b && to > b) return true;
  }
  return false;
}

}  // namespace

int64_t SeqBucket(int64_t s) {
  if (s <= 8) return std::max<int64_t>(s, 1);
  if (s <= 32) return RoundUp(s, 4);
  if (s <= 64) return RoundUp(s, 8);
  if (s <= 128) return RoundUp(s, 16);
  return RoundUp(s, 32);
}

int64_t TokenBucket(int64_t n) {
  if (n <= 16) return std::max<int64_t>(n, 1);
  if (n <= 64) return RoundUp(n, 8);
  if (n <= 256) return RoundUp(n, 16);
  if (n <= 1024) return RoundUp(n, 32);
  return RoundUp(n, 64);
}

std::optional<GraphPadding> PlanGraphPadding(int64_t S, int64_t N, int64_t L, int64_t R, int64_t max_dummy_len) {
  if (S <= 0 || N < S || L <= 0 || (R != N && R != S)) return std::nullopt;
  const bool all_rows = R == N;
  const int64_t cap = std::min(L, max_dummy_len);
  // The sequence bucket of S and the next two: a larger one leaves more room for tokens.
  int64_t sb = SeqBucket(S);
  for (int attempt = 0; attempt < 3; ++attempt, sb = SeqBucket(sb + 1)) {
    const int64_t d = sb - S;
    if (d == 0) {
      if (TokenBucket(N) != N) continue;
      GraphPadding p;
      p.tokens = N;
      p.seqs = S;
      p.rows = R;
      return p;
    }
    if (cap <= 0) return std::nullopt;
    // Each dummy holds 1..cap tokens.
    const int64_t nb = TokenBucket(N + d);
    if (nb > N + d * cap || CrossesFormBoundary(N, nb)) continue;
    GraphPadding p;
    p.dummy_all_logits = all_rows;
    const int64_t t = nb - N;
    for (int64_t i = 0; i < d; ++i) p.dummy_lens.push_back(t / d + (i < t % d ? 1 : 0));
    p.tokens = nb;
    p.seqs = sb;
    p.rows = all_rows ? nb : sb;
    return p;
  }
  return std::nullopt;
}

}  // namespace specd
