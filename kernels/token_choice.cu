// Sampled token choice on the device: the processed distribution (temperature, top-k, top-p,
// min-p), the draw (inverse CDF or coupled Gumbel argmax) and the rejection rule of a verify
// row, so a sampled step copies two ints per row to the host instead of [rows, V] fp32 logits
// and the host's fp64 softmax + full sort (speculative/sampling.cpp ChooseRow is the reference).
//
// Per row, with the row split over `used` chunks (grid used x R, as the argmax):
//   1. ArgmaxRows: the row's maximum m (its argmax is a greedy row's token), saved aside
//      (RowMaxK) because the next step rewrites the row in place.
//   2. ExpK: e = exp((l - m) / T) in fp64, stored as fp32 in place (e(max) = 1), the row's
//      total mass S in 2^-43 fixed point, and the cut's first histogram (below).
//   3. The cut (rows with top-k / top-p / min-p only): the host keeps the ranks r (entries by e
//      descending, ties to the lower id) while r < top_k and, for r > 0, the mass above r is
//      < top_p * S and e_r >= min_p. That set is an upper set of the order, found by a radix
//      select on e's float bits (positive floats order as their bits): four rounds of an 8-bit
//      histogram (ExpK, then HistK: counts and fixed-point masses per row) and a scan of the 256 buckets
//      (SelectK) that descends into the bucket where the rule first fails. The last round
//      leaves one value t and j of its ties kept; the kept set is {e > t} plus the j lowest ids
//      with e == t (TieCutK finds the j-th; it only runs when a cut splits a run of equal values).
//      Masses are integers, so their sums are exact in any order and the cut is deterministic.
//   4. NormK: p = e / kept mass (from the cut's integer sums), in place; per chunk, the mass of
//      the draw's distribution (p, or the residual max(0, p - q) of a verify row) or the best
//      Gumbel score.
//   5. DrawK: one block per row: the accept test, then the inverse-CDF draw (chunk by the chunk
//      masses, entry by a scan inside the chunk) or the Gumbel winner.
// The host sums the same quantities sequentially in fp64; the device's sums differ from it only
// in rounding, so draws agree except where u falls within rounding of a CDF step.
#include <climits>
#include <cmath>

#include "common.cuh"
#include "specd/counter_rng.h"
#include "specd/kernels.h"

namespace specd::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kBuckets = 256;
constexpr int kLevels = 4;
// e in [0, 1] in units of 2^-43: a row of at most 2^20 entries sums below 2^63.
constexpr double kFixScale = 8796093022208.0;

__device__ __forceinline__ uint64_t Fix(float e) {
  return static_cast<uint64_t>(static_cast<double>(e) * kFixScale + 0.5);
}

// Zero bytes are the start state (the launcher clears it): keep every e > 0.
struct RowState {
  unsigned long long s_fix;  // mass of the whole row
  uint64_t m_fix;            // mass of the candidates above the current prefix
  uint64_t c;                // candidates above the current prefix
  uint32_t prefix;           // key bits chosen so far
  float thr;                 // kept: e > thr, or e == thr and id < id_end
  int32_t id_end;
  int32_t tie_j;             // > 0: id_end is still to be found, one past the tie_j-th entry equal to thr
  int32_t done;              // the cut is known
  float max;                 // the row's maximum logit, saved before ExpK overwrites the row
  unsigned long long kept_fix;  // mass of the kept entries, set with the cut (filtered rows)
};
struct Chunks {  // the split of a row over gridDim.x blocks
  int64_t lo, hi;
};
__device__ __forceinline__ Chunks ChunkOf(int64_t c, int64_t chunk, int64_t V) {
  const int64_t lo = c * chunk;
  return {lo, lo + chunk < V ? lo + chunk : V};
}

__device__ __forceinline__ bool Sampled(const TokenRow& t) { return t.temperature > 0.f; }
__device__ __forceinline__ bool Filtered(const TokenRow& t, int64_t V) {
  return Sampled(t) && ((t.top_k > 0 && t.top_k < V) || t.top_p < 1.f || t.min_p > 0.f);
}
__device__ __forceinline__ bool Kept(float e, int64_t i, const RowState& s) {
  return e > s.thr || (e == s.thr && i < s.id_end);
}
// A rejection-rule verify row draws from the residual max(0, p - q).
__device__ __forceinline__ bool Residual(const TokenRow& t) { return Sampled(t) && !t.coupled && t.draft >= 0; }
__device__ __forceinline__ float ResidualOf(float p, int64_t i, const TokenRow& t, const float* qrow) {
  const double qv = qrow != nullptr ? static_cast<double>(qrow[i]) : (i == t.draft ? 1.0 : 0.0);
  return static_cast<float>(fmax(0.0, static_cast<double>(p) - qv));
}

// A block sum whose result (valid in thread 0) is the same on every run: fixed shuffle and
// shared-memory order. `red` holds 32 entries.
template <typename T>
__device__ __forceinline__ T BlockSumFixed(T v, T* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) red[wid] = v;
  __syncthreads();
  T r = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < nw; ++w) r += red[w];
  }
  return r;
}
// sum(part[0..n)) in a fixed order, valid in every thread; `red` holds 32 entries.
__device__ __forceinline__ double SumPartials(const double* part, int n, double* red) {
  double v = 0;
  for (int c = threadIdx.x; c < n; c += blockDim.x) v += part[c];
  v = BlockSumFixed(v, red);
  __shared__ double all;
  if (threadIdx.x == 0) all = v;
  __syncthreads();
  return all;
}
// Gumbel candidates: higher score wins, then the lower id (the host's strict `>` in id order).
__device__ __forceinline__ bool Better(double s, int32_t i, double bs, int32_t bi) {
  return s > bs || (s == bs && i < bi);
}

// A block's histogram of candidates (e > 0, e >= min_p) by 8 bits of their key, added into the
// row's histogram of the level (cleared by the launcher; integer atomics, so the sums do not
// depend on the order the blocks add in).
struct BlockHist {
  uint32_t cnt[kBuckets];
  unsigned long long mass[kBuckets];
  __device__ void Clear() {
    for (int b = threadIdx.x; b < kBuckets; b += blockDim.x) {
      cnt[b] = 0;
      mass[b] = 0;
    }
  }
  __device__ void Add(float e, int shift) {
    const int b = (__float_as_uint(e) >> shift) & (kBuckets - 1);
    atomicAdd(&cnt[b], 1u);
    atomicAdd(&mass[b], static_cast<unsigned long long>(Fix(e)));
  }
  __device__ void Flush(unsigned* hcnt, unsigned long long* hmass) const {
    for (int b = threadIdx.x; b < kBuckets; b += blockDim.x) {
      if (cnt[b] == 0) continue;
      atomicAdd(&hcnt[b], cnt[b]);
      atomicAdd(&hmass[b], mass[b]);
    }
  }
};
__device__ __forceinline__ bool Candidate(float e, const TokenRow& t) { return e > 0.f && e >= t.min_p; }

// 2a. The row's maximum, read before any block of ExpK rewrites the row in place.
__global__ void RowMaxK(const float* logits, int64_t V, int64_t R, const int32_t* ids, RowState* st) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r < R) st[r].max = logits[r * V + ids[r]];
}

// 2b. e in place, the row's fixed-point mass (integer atomics: the same sum in any order), and
// for rows with a filter the first round's histogram (by the top 8 bits of e).
__global__ void __launch_bounds__(kThreads)
    ExpK(float* logits, int64_t V, int64_t chunk, const TokenRow* rows, RowState* st, unsigned* hcnt0,
         unsigned long long* hmass0) {
  __shared__ uint64_t red[32];
  __shared__ BlockHist hist;
  const int64_t r = blockIdx.y;
  const TokenRow t = rows[r];
  if (!Sampled(t)) return;
  const bool filtered = Filtered(t, V);
  if (filtered) hist.Clear();
  __syncthreads();
  float* row = logits + r * V;
  const double m = st[r].max;
  const double T = t.temperature;
  const Chunks ck = ChunkOf(blockIdx.x, chunk, V);
  uint64_t acc = 0;
  for (int64_t i = ck.lo + threadIdx.x; i < ck.hi; i += kThreads) {
    const float l = row[i];
    const float e = l == -INFINITY ? 0.f : static_cast<float>(exp((static_cast<double>(l) - m) / T));
    row[i] = e;
    acc += Fix(e);
    if (filtered && Candidate(e, t)) hist.Add(e, 24);
  }
  acc = BlockSumFixed(acc, red);
  if (threadIdx.x == 0) atomicAdd(&st[r].s_fix, static_cast<unsigned long long>(acc));
  if (filtered) {
    __syncthreads();
    hist.Flush(hcnt0 + r * kBuckets, hmass0 + r * kBuckets);
  }
}

// 3a. The histogram of the candidates under the current prefix, by its next 8 bits (levels 1-3;
// ExpK builds level 0).
__global__ void __launch_bounds__(kThreads)
    HistK(const float* logits, int64_t V, int64_t chunk, const TokenRow* rows, const RowState* st, int level,
          unsigned* hcnt, unsigned long long* hmass) {
  __shared__ BlockHist hist;
  const int64_t r = blockIdx.y;
  const TokenRow t = rows[r];
  if (!Filtered(t, V) || st[r].done) return;
  const uint32_t prefix = st[r].prefix;
  hist.Clear();
  __syncthreads();
  const int shift = 24 - 8 * level;
  const float* row = logits + r * V;
  const Chunks ck = ChunkOf(blockIdx.x, chunk, V);
  for (int64_t i = ck.lo + threadIdx.x; i < ck.hi; i += kThreads) {
    const float e = row[i];
    if (!Candidate(e, t) || (__float_as_uint(e) >> (shift + 8)) != (prefix >> (shift + 8))) continue;
    hist.Add(e, shift);
  }
  __syncthreads();
  hist.Flush(hcnt + r * kBuckets, hmass + r * kBuckets);
}

// 3b. One block per row, a thread per bucket: picks the bucket in which the host's rule first
// fails (the highest bucket b whose end, rank c + count(>= b), fails) and descends into it.
__global__ void __launch_bounds__(kBuckets)
    SelectK(const TokenRow* rows, int64_t V, const unsigned* hcnt, const unsigned long long* hmass, int level,
            RowState* st) {
  __shared__ uint64_t C[kBuckets], M[kBuckets];
  __shared__ int best;
  const int64_t r = blockIdx.x;
  const TokenRow t = rows[r];
  if (!Filtered(t, V) || st[r].done) return;
  RowState s = st[r];
  const int b = threadIdx.x;
  const uint64_t cnt = hcnt[r * kBuckets + b], mass = hmass[r * kBuckets + b];
  C[b] = cnt;
  M[b] = mass;
  if (b == 0) best = -1;
  __syncthreads();
  for (int off = 1; off < kBuckets; off <<= 1) {  // suffix sums: C[b] = count of buckets >= b
    const uint64_t c2 = b + off < kBuckets ? C[b + off] : 0, m2 = b + off < kBuckets ? M[b + off] : 0;
    __syncthreads();
    C[b] += c2;
    M[b] += m2;
    __syncthreads();
  }
  const uint64_t kmax = t.top_k > 0 && t.top_k < V ? static_cast<uint64_t>(t.top_k) : static_cast<uint64_t>(V);
  const double tp_s = t.top_p < 1.f ? static_cast<double>(t.top_p) * static_cast<double>(s.s_fix) : INFINITY;
  // Rank c + C[b] >= 1 here (the bucket is not empty), so the rule's "r > 0" holds.
  const bool fail = cnt > 0 && (s.c + C[b] >= kmax || static_cast<double>(s.m_fix + M[b]) >= tp_s);
  if (fail) atomicMax(&best, b);
  __syncthreads();
  if (b != 0) return;
  if (best < 0) {
    // Nothing fails: the rule keeps every candidate. (Below level 0 the parent bucket failed and
    // the integer sums of its children are exact, so one of them fails too.)
    s.thr = t.min_p;
    s.id_end = INT_MAX;
    s.done = 1;
    s.kept_fix = s.m_fix + M[0];  // every candidate under the prefix (level 0: all of them)
    st[r] = s;
    return;
  }
  const int shift = 24 - 8 * level;
  const uint64_t above_c = best + 1 < kBuckets ? C[best + 1] : 0, above_m = best + 1 < kBuckets ? M[best + 1] : 0;
  const uint64_t cnt_t = C[best] - above_c;
  s.c += above_c;
  s.m_fix += above_m;
  s.prefix |= static_cast<uint32_t>(best) << shift;
  if (level == kLevels - 1) {
    // One value t left, cnt_t entries of it at ranks c .. c + cnt_t - 1; keep the first j.
    const float tv = __uint_as_float(s.prefix);
    const uint64_t tq = Fix(tv);
    uint64_t j = s.c < kmax ? kmax - s.c : 0;
    if (j > cnt_t) j = cnt_t;
    if (tp_s < INFINITY && tq > 0) {
      // The smallest i with mass(above) + i * t >= top_p * S ends the run.
      const double need = tp_s - static_cast<double>(s.m_fix);
      const double est = need <= 0 ? 0.0 : ceil(need / static_cast<double>(tq));
      uint64_t i = est < static_cast<double>(cnt_t) ? static_cast<uint64_t>(est) : cnt_t;
      while (i > 0 && static_cast<double>(s.m_fix + (i - 1) * tq) >= tp_s) --i;
      while (i < cnt_t && static_cast<double>(s.m_fix + i * tq) < tp_s) ++i;
      if (i < j) j = i;
    }
    if (s.c == 0 && j == 0) j = 1;  // the top entry is always kept
    s.thr = tv;
    s.id_end = j >= cnt_t ? INT_MAX : 0;
    s.tie_j = j > 0 && j < cnt_t ? static_cast<int32_t>(j) : 0;
    s.done = 1;
    s.kept_fix = s.m_fix + j * tq;
  }
  st[r] = s;
}

// 3c. A cut inside a run of equal values: one past the id of the run's tie_j-th entry in id order.
constexpr int kTieThreads = 1024;
__global__ void __launch_bounds__(kTieThreads) TieCutK(const float* logits, int64_t V, RowState* st) {
  __shared__ int warp_n[kTieThreads / 32];
  __shared__ int seen;
  const int64_t r = blockIdx.x;
  const int32_t j = st[r].tie_j;
  if (j <= 0) return;
  const float thr = st[r].thr;
  const float* row = logits + r * V;
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  if (threadIdx.x == 0) seen = 0;
  __syncthreads();
  for (int64_t base = 0; base < V; base += kTieThreads) {
    const int64_t i = base + threadIdx.x;
    const bool eq = i < V && row[i] == thr;
    const unsigned ball = __ballot_sync(0xffffffffu, eq);
    if (lane == 0) warp_n[wid] = __popc(ball);
    __syncthreads();
    int before = seen;
    for (int w = 0; w < wid; ++w) before += warp_n[w];
    const int rank = before + __popc(ball & ((1u << lane) - 1u)) + 1;
    if (eq && rank == j) {
      st[r].id_end = static_cast<int32_t>(i) + 1;
      st[r].tie_j = 0;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 0; w < kTieThreads / 32; ++w) seen += warp_n[w];
    }
    __syncthreads();
    if (seen >= j) break;
  }
}

// 4b. p in place; per chunk the draw distribution's mass (and p's, for a residual row whose
// residual is empty), or the best Gumbel candidate.
__global__ void __launch_bounds__(kThreads)
    NormK(float* logits, int64_t V, int64_t chunk, const TokenRow* rows, const RowState* st,
          const float* q, double* dist_mass, double* p_mass, double* g_score, int32_t* g_id) {
  __shared__ double red[32];
  __shared__ double ws[32];
  __shared__ int32_t wi[32];
  const int64_t r = blockIdx.y;
  const TokenRow t = rows[r];
  if (!Sampled(t)) return;
  const int splits = gridDim.x;
  // The kept mass from the select's exact integer sums (unfiltered rows: the whole row); the
  // fixed point's rounding, below V * 2^-44, is far under p's fp32 rounding.
  const RowState s0 = st[r];
  const double tot = static_cast<double>(Filtered(t, V) ? s0.kept_fix : s0.s_fix) / kFixScale;
  const RowState& s = s0;
  const bool residual = Residual(t);
  const float* qrow = residual && t.q_row >= 0 ? q + int64_t{t.q_row} * V : nullptr;
  float* row = logits + r * V;
  const Chunks ck = ChunkOf(blockIdx.x, chunk, V);
  double dm = 0, pm = 0, bs = -INFINITY;
  int32_t bi = INT_MAX;
  for (int64_t i = ck.lo + threadIdx.x; i < ck.hi; i += kThreads) {
    const float e = row[i];
    const float p = Kept(e, i, s) ? static_cast<float>(static_cast<double>(e) / tot) : 0.f;
    row[i] = p;
    if (t.coupled) {
      if (p > 0.f) {
        const double u = fmax(CounterUniform(t.seed, static_cast<uint64_t>(t.position), static_cast<uint64_t>(i),
                                             RngStream::kGumbel),
                              1e-300);
        const double score = log(static_cast<double>(p)) - log(-log(u));
        if (Better(score, static_cast<int32_t>(i), bs, bi)) {
          bs = score;
          bi = static_cast<int32_t>(i);
        }
      }
    } else if (residual) {
      dm += ResidualOf(p, i, t, qrow);
      pm += p;
    } else {
      dm += p;
    }
  }
  const int64_t slot = r * splits + blockIdx.x;
  if (t.coupled) {
    for (int o = 16; o > 0; o >>= 1) {
      const double s2 = __shfl_down_sync(0xffffffffu, bs, o);
      const int32_t i2 = __shfl_down_sync(0xffffffffu, bi, o);
      if (Better(s2, i2, bs, bi)) {
        bs = s2;
        bi = i2;
      }
    }
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    if (lane == 0) {
      ws[wid] = bs;
      wi[wid] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < kThreads / 32; ++w) {
        if (Better(ws[w], wi[w], bs, bi)) {
          bs = ws[w];
          bi = wi[w];
        }
      }
      g_score[slot] = bs;
      g_id[slot] = bi;
    }
    return;
  }
  dm = BlockSumFixed(dm, red);
  pm = BlockSumFixed(pm, red);
  if (threadIdx.x == 0) {
    dist_mass[slot] = dm;
    p_mass[slot] = pm;
  }
}

// Partials per row are at most kMaxSplits, so a draw stages them in shared memory.
constexpr int kMaxSplits = 1024;

// Exclusive prefix sums of one value per thread, in a fixed order (warp shuffles, then the
// warps' totals); returns this thread's base.
__device__ __forceinline__ double ExclusiveScanD(double v) {
  __shared__ double warp_tot[kThreads / 32];
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  double inc = v;
  for (int o = 1; o < 32; o <<= 1) {
    const double n = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += n;
  }
  if (lane == 31) warp_tot[wid] = inc;
  __syncthreads();
  double before = 0;
  for (int w = 0; w < wid; ++w) before += warp_tot[w];
  __syncthreads();
  return before + inc - v;
}

// The inverse-CDF draw of one row from its chunk masses: the first entry w > 0 whose cumulative
// mass exceeds u * total (the host's SampleFrom); the last entry w > 0 when rounding leaves
// u * total at or past the end.
template <typename Weight>
__device__ int32_t InverseCdf(const double* part, int splits, int64_t chunk, int64_t V, double u, Weight w) {
  __shared__ double parts[kMaxSplits];
  __shared__ int sel;
  __shared__ double local;
  __shared__ int winner, last_tid;
  __shared__ int32_t token;
  for (int c = threadIdx.x; c < splits; c += blockDim.x) parts[c] = part[c];
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0;
    for (int c = 0; c < splits; ++c) total += parts[c];
    const double target = u * total;
    double cum = 0;
    sel = -1;
    int last = -1;
    for (int c = 0; c < splits; ++c) {
      if (parts[c] > 0) {
        last = c;
        if (target < cum + parts[c]) {
          sel = c;
          local = target - cum;
          break;
        }
      }
      cum += parts[c];
    }
    if (sel < 0) {
      sel = last;
      local = INFINITY;
    }
    winner = INT_MAX;
    last_tid = -1;
    token = 0;
  }
  __syncthreads();
  if (sel < 0) return 0;  // an all-zero distribution (cannot come from a processed row)
  const Chunks ck = ChunkOf(sel, chunk, V);
  const int64_t seg = (ck.hi - ck.lo + kThreads - 1) / kThreads;
  const int64_t lo = ck.lo + threadIdx.x * seg, hi = lo + seg < ck.hi ? lo + seg : ck.hi;
  double mine = 0;
  for (int64_t i = lo; i < hi; ++i) {
    const float x = w(i);
    if (x > 0.f) mine += x;
  }
  const double b0 = ExclusiveScanD(mine);
  if (mine > 0) {
    if (local < b0 + mine) atomicMin(&winner, static_cast<int>(threadIdx.x));
    atomicMax(&last_tid, static_cast<int>(threadIdx.x));
  }
  __syncthreads();
  const int who = winner != INT_MAX ? winner : last_tid;
  if (static_cast<int>(threadIdx.x) == who) {
    double cum = b0;
    int64_t last = -1, found = -1;
    for (int64_t i = lo; i < hi; ++i) {
      const float x = w(i);
      if (x <= 0.f) continue;
      last = i;
      cum += x;
      if (local < cum) {
        found = i;
        break;
      }
    }
    token = static_cast<int32_t>(found >= 0 ? found : last);
  }
  __syncthreads();
  return token;
}

// 5. One block per row: (token, accept).
__global__ void __launch_bounds__(kThreads)
    DrawK(const float* logits, int64_t V, int64_t chunk, int splits, const TokenRow* rows, const int32_t* ids,
          const float* q, const double* dist_mass, const double* p_mass, const double* g_score,
          const int32_t* g_id, int32_t* out) {
  __shared__ double red[32];
  __shared__ double gs[kMaxSplits];
  __shared__ int32_t gi[kMaxSplits];
  const int64_t r = blockIdx.x;
  const TokenRow t = rows[r];
  const float* p = logits + r * V;
  const uint64_t pos = static_cast<uint64_t>(t.position), idx = static_cast<uint64_t>(t.index);
  int32_t token = 0, accept = 0;
  if (!Sampled(t)) {
    token = ids[r];
  } else if (t.coupled) {
    for (int c = threadIdx.x; c < splits; c += blockDim.x) {
      gs[c] = g_score[r * splits + c];
      gi[c] = g_id[r * splits + c];
    }
    __syncthreads();
    double bs = -INFINITY;
    int32_t bi = INT_MAX;
    for (int c = 0; c < splits; ++c) {
      if (Better(gs[c], gi[c], bs, bi)) {
        bs = gs[c];
        bi = gi[c];
      }
    }
    token = bi == INT_MAX ? 0 : bi;
  } else if (Residual(t)) {
    const float* qrow = t.q_row >= 0 ? q + int64_t{t.q_row} * V : nullptr;
    const double pd = p[t.draft], qd = qrow != nullptr ? qrow[t.draft] : 1.0;
    const double ua = CounterUniform(t.seed, pos, idx, RngStream::kAccept);
    accept = qd > 0 && ua < fmin(1.0, pd / qd);
    const double res_mass = SumPartials(dist_mass + r * splits, splits, red);
    const double ur = CounterUniform(t.seed, pos, idx, RngStream::kResidual);
    if (res_mass > 0) {
      token = InverseCdf(dist_mass + r * splits, splits, chunk, V, ur,
                         [&](int64_t i) { return ResidualOf(p[i], i, t, qrow); });
    } else {  // p == q: any draw from p is exact
      token = InverseCdf(p_mass + r * splits, splits, chunk, V, ur, [&](int64_t i) { return p[i]; });
    }
  } else {
    const double u = CounterUniform(t.seed, pos, idx, static_cast<RngStream>(t.stream));
    token = InverseCdf(dist_mass + r * splits, splits, chunk, V, u, [&](int64_t i) { return p[i]; });
  }
  if (threadIdx.x == 0) {
    if (!Residual(t)) accept = t.draft >= 0 && token == t.draft;
    out[2 * r] = token;
    out[2 * r + 1] = accept;
  }
}

struct Layout {
  int64_t chunk;
  int used;
  size_t argmax, ids, st, hcnt, hmass, cleared, dist, pmass, gscore, gid, total;
};
Layout LayoutOf(int64_t R, int64_t V) {
  Layout l{};
  const int splits = ArgmaxSplits(R, V);
  l.chunk = (V + splits - 1) / splits;
  if (l.chunk * kMaxSplits < V) l.chunk = (V + kMaxSplits - 1) / kMaxSplits;
  l.used = static_cast<int>((V + l.chunk - 1) / l.chunk);
  const size_t n = static_cast<size_t>(R) * static_cast<size_t>(l.used);
  const size_t rb = static_cast<size_t>(R) * kBuckets * kLevels;
  size_t off = 0;
  auto take = [&](size_t bytes) {
    const size_t at = off;
    off += (bytes + 255) / 256 * 256;
    return at;
  };
  l.argmax = take(sizeof(uint64_t) * static_cast<size_t>(R) * static_cast<size_t>(splits));
  l.ids = take(sizeof(int32_t) * static_cast<size_t>(R));
  // Row states and the histograms of every level: cleared together at the start of a call.
  l.st = take(sizeof(RowState) * static_cast<size_t>(R));
  l.hcnt = take(sizeof(unsigned) * rb);
  l.hmass = take(sizeof(unsigned long long) * rb);
  l.cleared = off - l.st;
  l.dist = take(sizeof(double) * n);
  l.pmass = take(sizeof(double) * n);
  l.gscore = take(sizeof(double) * n);
  l.gid = take(sizeof(int32_t) * n);
  l.total = off;
  return l;
}

}  // namespace

size_t ChooseTokensScratchBytes(int64_t R, int64_t V) { return R > 0 && V > 0 ? LayoutOf(R, V).total : 0; }

cudaError_t ChooseTokens(float* logits, int64_t R, int64_t V, const TokenRow* rows, const TokenRow* host_rows,
                         const float* q, int64_t Q, void* scratch, int32_t* out, cudaStream_t s) {
  // V <= 2^20: a row's fixed-point mass (each entry <= 2^43) stays below 2^63.
  SPECD_CHECK_ARG(logits && rows && host_rows && scratch && out && R >= 0 && R <= 65535 && V > 0 &&
                  V <= (int64_t{1} << 20) && Q >= 0 && (q != nullptr || Q == 0));
  if (R == 0) return cudaSuccess;
  bool sampled = false, filtered = false;
  for (int64_t r = 0; r < R; ++r) {
    const TokenRow& t = host_rows[r];
    SPECD_CHECK_ARG(std::isfinite(t.temperature) && t.q_row < Q && t.draft < V);
    if (t.temperature <= 0.f) continue;
    SPECD_CHECK_ARG(t.top_k >= 0 && t.top_p > 0.f && t.top_p <= 1.f && t.min_p >= 0.f && t.min_p <= 1.f);
    sampled = true;
    filtered |= (t.top_k > 0 && t.top_k < V) || t.top_p < 1.f || t.min_p > 0.f;
  }
  const Layout l = LayoutOf(R, V);
  char* base = static_cast<char*>(scratch);
  auto at = [&](size_t off) { return static_cast<void*>(base + off); };
  auto* ids = static_cast<int32_t*>(at(l.ids));
  auto* st = static_cast<RowState*>(at(l.st));
  auto* dist = static_cast<double*>(at(l.dist));
  auto* pmass = static_cast<double*>(at(l.pmass));
  auto* gscore = static_cast<double*>(at(l.gscore));
  auto* gid = static_cast<int32_t*>(at(l.gid));
  cudaError_t e = ArgmaxRows(logits, R, V, static_cast<uint64_t*>(at(l.argmax)), ids, s);
  if (e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>(l.used), static_cast<unsigned>(R));
  if (sampled) {
    if ((e = cudaMemsetAsync(st, 0, l.cleared, s)) != cudaSuccess) return e;
    RowMaxK<<<Blocks(R, 128), 128, 0, s>>>(logits, V, R, ids, st);
    if ((e = LaunchStatus()) != cudaSuccess) return e;
    auto hcnt = [&](int level) {
      return static_cast<unsigned*>(at(l.hcnt)) + static_cast<size_t>(level) * R * kBuckets;
    };
    auto hmass = [&](int level) {
      return static_cast<unsigned long long*>(at(l.hmass)) + static_cast<size_t>(level) * R * kBuckets;
    };
    ExpK<<<grid, kThreads, 0, s>>>(logits, V, l.chunk, rows, st, hcnt(0), hmass(0));
    if ((e = LaunchStatus()) != cudaSuccess) return e;
    if (filtered) {
      for (int level = 0; level < kLevels; ++level) {
        if (level > 0) {
          HistK<<<grid, kThreads, 0, s>>>(logits, V, l.chunk, rows, st, level, hcnt(level), hmass(level));
          if ((e = LaunchStatus()) != cudaSuccess) return e;
        }
        SelectK<<<static_cast<unsigned>(R), kBuckets, 0, s>>>(rows, V, hcnt(level), hmass(level), level, st);
        if ((e = LaunchStatus()) != cudaSuccess) return e;
      }
      TieCutK<<<static_cast<unsigned>(R), kTieThreads, 0, s>>>(logits, V, st);
      if ((e = LaunchStatus()) != cudaSuccess) return e;
    }
    NormK<<<grid, kThreads, 0, s>>>(logits, V, l.chunk, rows, st, q, dist, pmass, gscore, gid);
    if ((e = LaunchStatus()) != cudaSuccess) return e;
  }
  DrawK<<<static_cast<unsigned>(R), kThreads, 0, s>>>(logits, V, l.chunk, l.used, rows, ids, q, dist, pmass, gscore,
                                                      gid, out);
  return LaunchStatus();
}

}  // namespace specd::kernels
