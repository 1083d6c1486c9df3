// MoE routing (fp32 softmax, top-k, renormalised), the accumulation of expert outputs, and the
// routed experts on the device (grouping, expert FFNs, combine) for graph-captured forwards.
#include "common.cuh"
#include "specd/kernels.h"

namespace specd::kernels {
namespace {

// acc + w * y, one contracted fma: the cuBLAS path (ScaledRowAdd) and the device path (MoeCombine)
// add an expert's output through here so they round alike.
__device__ __forceinline__ float MoeAdd(float acc, float w, bf16 y) { return acc + w * ToF(y); }
__device__ __forceinline__ float MoeSharedScale(const bf16* gate_logit, int64_t t) {
  return gate_logit != nullptr ? SigmoidF(ToF(gate_logit[t])) : 0.f;
}
// MoeFinish's element, shared with MoeCombine for the same reason.
__device__ __forceinline__ bf16 MoeOut(float acc, float gs, const bf16* shared, int64_t i) {
  if (shared != nullptr) acc += gs * ToF(shared[i]);
  return ToB(acc);
}

// One warp per token, lane j holding experts j, j + 32, ...: the k largest probabilities found
// by k rounds of "the next after (prev_p, prev) in (prob desc, id asc) order", each a per-lane
// scan and a warp reduction. (A thread per token ran the k rounds over all E experts serially:
// ~50 us at E = 256, k = 8, one token.) p = exp(l - max) / sum: the sum's order (a warp tree)
// scales every p alike, so the chosen ids do not depend on it.
__device__ __forceinline__ bool RouterAfter(float p, int e, float prev_p, int prev) {
  return p < prev_p || (p == prev_p && e > prev);
}
__device__ __forceinline__ bool RouterBetter(float p, int e, float bp, int be) {
  return p > bp || (p == bp && be >= 0 && e < be) || (be < 0 && e >= 0);
}
__global__ void RouterTopKK(const float* logits, int64_t n, int E, int k, int32_t* ids, float* weights) {
  const int64_t t = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (t >= n) return;  // whole warps leave together
  const float* l = logits + t * E;
  float mx = -INFINITY;
  for (int e = lane; e < E; e += 32) mx = fmaxf(mx, l[e]);
  mx = WarpMax(mx);
  float sum = 0.f;
  for (int e = lane; e < E; e += 32) sum += __expf(l[e] - mx);
  sum = WarpSum(sum);
  float tot = 0.f;
  int prev = -1;
  float prev_p = INFINITY;
  for (int r = 0; r < k; ++r) {
    int best = -1;
    float bp = -1.f;
    for (int e = lane; e < E; e += 32) {
      const float p = __expf(l[e] - mx) / sum;
      if (RouterAfter(p, e, prev_p, prev) && p > bp) {  // lanes scan ids upwards: ties keep the lower
        bp = p;
        best = e;
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float op = __shfl_xor_sync(0xffffffffu, bp, o);
      const int oe = __shfl_xor_sync(0xffffffffu, best, o);
      if (RouterBetter(op, oe, bp, best)) {
        bp = op;
        best = oe;
      }
    }
    if (lane == 0) {
      ids[t * k + r] = best;
      weights[t * k + r] = bp;
    }
    tot += bp;
    prev = best;
    prev_p = bp;
  }
  if (lane == 0) {
    for (int r = 0; r < k; ++r) weights[t * k + r] /= tot;
  }
}

__global__ void ScaledRowAddK(const bf16* y, const int32_t* rows, const float* w, int64_t h, float* acc) {
  const int64_t i = blockIdx.x;
  float* dst = acc + int64_t{rows[i]} * h;
  const float wi = w[i];
  for (int64_t j = threadIdx.x; j < h; j += blockDim.x) dst[j] = MoeAdd(dst[j], wi, y[i * h + j]);
}

__global__ void MoeFinishK(const float* acc, const bf16* shared, const bf16* gate_logit, int64_t h, bf16* out) {
  const int64_t t = blockIdx.x;
  const float gs = MoeSharedScale(gate_logit, t);
  for (int64_t j = threadIdx.x; j < h; j += blockDim.x) out[t * h + j] = MoeOut(acc[t * h + j], gs, shared, t * h + j);
}

// ---- the device path ----

// MoeGroup's output in the scratch. S = min(E, n*k) expert slots, each with its expert (the
// chosen ones in ascending id, -1 past them), its first grouped row and its row count; per grouped
// row the token; per entry (token-major, as ids) its grouped row, -1 where the id is no expert.
template <typename I>
struct Groups {
  I* expert;
  I* begin;
  I* count;
  I* tok;
  I* row;
};
__host__ __device__ inline int Slots(int64_t nk, int E) { return nk < E ? static_cast<int>(nk) : E; }
template <typename I>
Groups<I> Layout(I* s, int64_t nk, int E) {
  const int S = Slots(nk, E);
  return {s, s + S, s + 2 * S, s + 3 * S, s + 3 * S + nk};
}

constexpr int kGroupThreads = 1024;

// Block-wide exclusive scan of the pair (a, b) in place; returns the totals.
__device__ int2 BlockExclusiveScan2(int& a, int& b) {
  __shared__ int2 warp_tot[kGroupThreads / 32];
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  int ia = a, ib = b;
  for (int o = 1; o < 32; o <<= 1) {
    const int na = __shfl_up_sync(0xffffffffu, ia, o), nb = __shfl_up_sync(0xffffffffu, ib, o);
    if (lane >= o) {
      ia += na;
      ib += nb;
    }
  }
  if (lane == 31) warp_tot[wid] = make_int2(ia, ib);
  __syncthreads();
  int2 before = make_int2(0, 0), tot = make_int2(0, 0);
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) {
    if (w < wid) before = make_int2(before.x + warp_tot[w].x, before.y + warp_tot[w].y);
    tot = make_int2(tot.x + warp_tot[w].x, tot.y + warp_tot[w].y);
  }
  a = before.x + ia - a;
  b = before.y + ib - b;
  return tot;
}

// One block: a counting sort of n*k entries (at most kMoeDeviceMaxRows * kMoeMaxTopK) over E
// experts in shared memory. Rows within an expert land in atomic order; the expert kernel's
// result for a row does not depend on where in its group the row sits.
__global__ void __launch_bounds__(kGroupThreads) MoeGroupK(const int32_t* ids, int64_t nk, int k, int E,
                                                           Groups<int32_t> g) {
  extern __shared__ int32_t cnt[];  // [E] rows per expert, then [E] each expert's next free row
  int32_t* next = cnt + E;
  for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < nk; i += blockDim.x) {
    const int32_t e = ids[i];
    if (e >= 0 && e < E) atomicAdd(&cnt[e], 1);
  }
  __syncthreads();
  // Each thread takes a run of consecutive experts, so slots come out in ascending expert id.
  const int per = (E + blockDim.x - 1) / blockDim.x;
  const int e0 = min(E, static_cast<int>(threadIdx.x) * per), e1 = min(E, e0 + per);
  int rows = 0, slot = 0;
  for (int e = e0; e < e1; ++e) {
    rows += cnt[e];
    slot += cnt[e] > 0;
  }
  const int active = BlockExclusiveScan2(rows, slot).y;
  for (int e = e0; e < e1; ++e) {
    next[e] = rows;
    if (cnt[e] == 0) continue;
    g.expert[slot] = e;
    g.begin[slot] = rows;
    g.count[slot] = cnt[e];
    rows += cnt[e];
    ++slot;
  }
  for (int s = active + threadIdx.x; s < Slots(nk, E); s += blockDim.x) {
    g.expert[s] = -1;
    g.begin[s] = 0;
    g.count[s] = 0;
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < nk; i += blockDim.x) {
    const int32_t e = ids[i];
    int32_t r = -1;
    if (e >= 0 && e < E) {
      r = atomicAdd(&next[e], 1);
      g.tok[r] = static_cast<int32_t>(i / k);
    }
    g.row[i] = r;
  }
}

constexpr int kExpertWarps = 8;

struct ExpertArgs {
  const bf16* x;     // gate/up form: the tokens' rows (through Groups::tok); down form: act rows
  const bf16* w;     // expert 0's weights; expert e's start e * w_stride further
  int64_t w_stride;
  int64_t M;         // outputs per row (gate/up form: inter; output m also reads up row inter + m)
  int64_t K;
  bf16* out;         // [n*k, M], grouped order
  Groups<const int32_t> g;
};

// One expert's FFN half for one slot (blockIdx.y) and a run of 16-row output tiles (blockIdx.x):
// skinny_gemm.cu's tensor-core scheme (a warp owns a tile and a share of K, K permuted within
// 32-element blocks so each lane loads 16 contiguous bytes per row, the shares meet in slice
// order) with the x rows gathered, over the expert's rows 16 at a time. Every row's sum runs
// over the same K blocks in the same order however many rows the expert has, so its bits do not
// depend on them. K % 8 == 0: a lane's chunk past K loads zeros on both sides (exact zeros).
template <bool kGateUp, int SPLIT>
__global__ void __launch_bounds__(32 * kExpertWarps) MoeExpertK(ExpertArgs a) {
  constexpr int kTiles = kGateUp ? 2 : 1;  // gate and up tiles, or the down tile
  constexpr int kTilesPerBlock = kExpertWarps / SPLIT;
  __shared__ float part[kExpertWarps][32][4];
  const int slot = blockIdx.y;
  const int e = a.g.expert[slot];
  if (e < 0) return;  // the whole block: no expert took this slot
  const int begin = a.g.begin[slot], count = a.g.count[slot];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int slice = warp % SPLIT;
  const int64_t row0 = (blockIdx.x * int64_t{kTilesPerBlock} + warp / SPLIT) * 16;
  const int64_t chunks = a.K / 8, blocks = (chunks + 3) / 4;
  const uint4* wr[kTiles][2];
  LaneWeightRows(a.w + e * a.w_stride, row0, a.M, a.K, lane, wr);
  for (int r0 = 0; r0 < count; r0 += 16) {
    const int nt = count - r0 > 8 ? 2 : 1;  // 8-row x tiles with a live row
    const uint4* xr[2];
    bool xlive[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int q = r0 + 8 * j + g;
      xlive[j] = q < count;
      const int src = !xlive[j] ? 0 : (kGateUp ? a.g.tok[begin + q] : begin + q);
      xr[j] = reinterpret_cast<const uint4*>(a.x + int64_t{src} * a.K) + t;
    }
    float acc[kTiles][2][4] = {};
#pragma unroll 2
    for (int64_t b = slice; b < blocks; b += SPLIT) {
      const bool in = b * 4 + t < chunks;
      uint4 wv[kTiles][2], xv[2];
#pragma unroll
      for (int tile = 0; tile < kTiles; ++tile)
#pragma unroll
        for (int h = 0; h < 2; ++h) wv[tile][h] = in ? __ldg(wr[tile][h] + b * 4) : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int j = 0; j < 2; ++j) xv[j] = in && xlive[j] ? __ldg(xr[j] + b * 4) : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int tile = 0; tile < kTiles; ++tile) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          if (j >= nt) break;
          MmaKBlock(acc[tile][j], wv[tile][0], wv[tile][1], xv[j]);
        }
      }
    }
    if constexpr (SPLIT > 1) SumKShares<SPLIT>(acc, part, warp, lane, slice);
    if (slice != 0) continue;  // no return: the next 16 rows need every warp at the barriers
    // Element i of x tile j: weight row row0 + g + 8 * (i >> 1), group row r0 + 8 * j + 2 * t + (i & 1).
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t m = row0 + g + 8 * (i >> 1);
      if (m >= a.M) continue;
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int q = r0 + 8 * j + 2 * t + (i & 1);
        if (q >= count) continue;
        a.out[int64_t{begin + q} * a.M + m] = kGateUp ? SwiGluB(acc[0][j][i], acc[kTiles - 1][j][i]) : ToB(acc[0][j][i]);
      }
    }
  }
}

template <bool kGateUp, int SPLIT>
cudaError_t LaunchExpertsSplit(const ExpertArgs& a, int slots, cudaStream_t s) {
  constexpr int kTilesPerBlock = kExpertWarps / SPLIT;
  const int64_t tiles = (a.M + 15) / 16;
  const dim3 grid(static_cast<unsigned>((tiles + kTilesPerBlock - 1) / kTilesPerBlock), static_cast<unsigned>(slots));
  MoeExpertK<kGateUp, SPLIT><<<grid, 32 * kExpertWarps, 0, s>>>(a);
  return LaunchStatus();
}

template <bool kGateUp>
cudaError_t LaunchExperts(const ExpertArgs& a, int slots, cudaStream_t s) {
  return WithMmaSplit(a.K,
                      [&](auto split) { return LaunchExpertsSplit<kGateUp, decltype(split)::value>(a, slots, s); });
}

// One block per token: its experts' outputs in ascending expert id (ties in top-k order), each
// added as ScaledRowAdd adds it, then MoeFinish's element.
__global__ void MoeCombineK(const int32_t* ids, const float* weights, const int32_t* rows, int k, const bf16* y,
                            const bf16* shared, const bf16* gate_logit, int64_t h, bf16* out) {
  __shared__ int32_t row[kMoeMaxTopK];
  __shared__ float wt[kMoeMaxTopK];
  __shared__ int live;
  const int64_t t = blockIdx.x;
  if (threadIdx.x == 0) {
    int32_t key[kMoeMaxTopK];
    int n = 0;
    for (int r = 0; r < k; ++r) {
      const int32_t p = rows[t * k + r];
      if (p < 0) continue;
      const int32_t e = ids[t * k + r];
      int i = n++;
      for (; i > 0 && key[i - 1] > e; --i) {
        key[i] = key[i - 1];
        row[i] = row[i - 1];
        wt[i] = wt[i - 1];
      }
      key[i] = e;
      row[i] = p;
      wt[i] = weights[t * k + r];
    }
    live = n;
  }
  __syncthreads();
  const float gs = MoeSharedScale(gate_logit, t);
  for (int64_t j = threadIdx.x; j < h; j += blockDim.x) {
    float acc = 0.f;  // the cuBLAS path's zeroed accumulator
    for (int i = 0; i < live; ++i) acc = MoeAdd(acc, wt[i], y[int64_t{row[i]} * h + j]);
    out[t * h + j] = MoeOut(acc, gs, shared, t * h + j);
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
}  // namespace

cudaError_t RouterTopK(const float* logits, int64_t n, int experts, int k, int32_t* ids, float* weights,
                       cudaStream_t s) {
  SPECD_CHECK_ARG(logits && ids && weights && n >= 0 && experts > 0 && k > 0 && k <= experts);
  if (n == 0) return cudaSuccess;
  RouterTopKK<<<Blocks(n * 32, 128), 128, 0, s>>>(logits, n, experts, k, ids, weights);
  return LaunchStatus();
}

cudaError_t ScaledRowAdd(const bf16* y, const int32_t* rows, const float* w, int64_t n, int64_t h, float* acc,
                         cudaStream_t s) {
  SPECD_CHECK_ARG(y && rows && w && acc && n >= 0 && h > 0);
  if (n == 0) return cudaSuccess;
  ScaledRowAddK<<<static_cast<unsigned>(n), 256, 0, s>>>(y, rows, w, h, acc);
  return LaunchStatus();
}

cudaError_t MoeFinish(const float* acc, const bf16* shared, const bf16* gate_logit, int64_t n, int64_t h, bf16* out,
                      cudaStream_t s) {
  SPECD_CHECK_ARG(acc && out && n >= 0 && h > 0 && ((shared == nullptr) == (gate_logit == nullptr)));
  if (n == 0) return cudaSuccess;
  MoeFinishK<<<static_cast<unsigned>(n), 256, 0, s>>>(acc, shared, gate_logit, h, out);
  return LaunchStatus();
}

bool MoeDeviceApplies(int64_t n, int64_t h, int64_t inter, int experts, int k) {
  return n >= 1 && n <= kMoeDeviceMaxRows && h > 0 && inter > 0 && h % 8 == 0 && inter % 8 == 0 && experts >= 1 &&
         experts <= kMoeMaxExperts && k >= 1 && k <= experts && k <= kMoeMaxTopK;
}

int64_t MoeScratchInts(int64_t n, int k, int experts) {
  return 3 * int64_t{Slots(n * k, experts)} + 2 * n * k;
}

cudaError_t MoeGroup(const int32_t* ids, int64_t n, int k, int experts, int32_t* scratch, cudaStream_t s) {
  SPECD_CHECK_ARG(ids && scratch && n >= 1 && n <= kMoeDeviceMaxRows && experts >= 1 && experts <= kMoeMaxExperts &&
                  k >= 1 && k <= experts && k <= kMoeMaxTopK);
  const size_t smem = 2 * sizeof(int32_t) * static_cast<size_t>(experts);
  MoeGroupK<<<1, kGroupThreads, smem, s>>>(ids, n * k, k, experts, Layout(scratch, n * k, experts));
  return LaunchStatus();
}

cudaError_t MoeExperts(const bf16* x, const bf16* gate_up, const bf16* down, const int32_t* scratch, int64_t n, int k,
                       int experts, int64_t h, int64_t inter, bf16* act, bf16* y, cudaStream_t s) {
  SPECD_CHECK_ARG(x && gate_up && down && scratch && act && y && MoeDeviceApplies(n, h, inter, experts, k) &&
                  Aligned16(x) && Aligned16(gate_up) && Aligned16(down) && Aligned16(act));
  const Groups<const int32_t> g = Layout(scratch, n * k, experts);
  const int slots = Slots(n * k, experts);
  const cudaError_t e = LaunchExperts<true>(ExpertArgs{x, gate_up, 2 * inter * h, inter, h, act, g}, slots, s);
  if (e != cudaSuccess) return e;
  return LaunchExperts<false>(ExpertArgs{act, down, h * inter, h, inter, y, g}, slots, s);
}

cudaError_t MoeCombine(const int32_t* ids, const float* weights, const int32_t* scratch, const bf16* y,
                       const bf16* shared, const bf16* gate_logit, int64_t n, int k, int experts, int64_t h, bf16* out,
                       cudaStream_t s) {
  SPECD_CHECK_ARG(ids && weights && scratch && y && out && n >= 1 && n <= kMoeDeviceMaxRows && h > 0 &&
                  experts >= 1 && experts <= kMoeMaxExperts && k >= 1 && k <= experts && k <= kMoeMaxTopK &&
                  ((shared == nullptr) == (gate_logit == nullptr)));
  const Groups<const int32_t> g = Layout(scratch, n * k, experts);
  MoeCombineK<<<static_cast<unsigned>(n), 256, 0, s>>>(ids, weights, g.row, k, y, shared, gate_logit, h, out);
  return LaunchStatus();
}

}  // namespace specd::kernels
