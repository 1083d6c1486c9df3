// Skinny GEMM for decode: out[1, m] = x[1, K] · w[m, K]^T (one row: kSkinnyUseRows).
// Batch-1 decode is bound by streaming w once; cuBLAS's general kernels reach a fraction of the
// bandwidth at these shapes. One to four warps per output row: each lane streams 16-byte chunks
// of w's row (coalesced across the warp, 4 or 8 chunks in flight) and multiplies them with the
// same chunk of x (small, served from L1/L2); warp and block reductions finish the dot product.
//
// Programmatic dependent launch: the kernel is launched so that it may start while the kernel
// before it (a norm, a gate) still runs. Weights do not depend on that kernel, so each warp
// issues its first weight loads, then waits (griddepcontrol.wait) before reading x. That hides
// the launch and ramp-up of each projection behind the small kernel before it, a few µs per
// projection, ~200 projections per 9B decode step.
//
// Forms: plain (one output), stacked (weights of several projections back to back, each
// writing its own output: q/k/v, GDN in_proj), and gate/up with the SwiGLU in the epilogue.
#include <cooperative_groups.h>

#include "common.cuh"
#include "specd/kernels.h"

namespace specd::kernels {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int64_t kSkinnyUseRows = 16;
bool g_programmatic = true;
int g_force_split = 0, g_force_unroll = 0;
bool g_cuda_core_decode = false;
bool g_wide = false;  // opt-in: slower than cuBLASLt today (docs/PERFORMANCE.md)

__device__ __forceinline__ void Bf16x8ToF32(const uint4& u, float (&f)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 p = __bfloat1622float2(h[i]);
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}

enum class Form { kPlainBf16, kPlainF32, kStacked, kSwiGlu };

struct Args {
  const bf16* x;
  const bf16* w;
  int64_t M;  // output rows (kSwiGlu: I; each row also reads weight row I + m)
  int64_t K;
  SkinnyStack stack;  // kStacked: segment ends and outputs; other forms: out = stack.out[0]
};

// A warp's share of one weight row: 16-byte chunks lane + 32 * (slice + SPLIT * j), UNROLL
// chunks in flight; the first UNROLL come from `pre` (loaded before the dependency wait).
template <int SPLIT, int UNROLL>
__device__ __forceinline__ float DotRow(const uint4* wr, const bf16* x, int64_t K, int base, uint4 (&pre)[UNROLL]) {
  const int64_t chunks = K / 8;
  constexpr int kStride = 32 * SPLIT;
  float acc = 0.f;
  bool first = true;
  for (int64_t c0 = base; c0 < chunks; c0 += int64_t{kStride} * UNROLL) {
    uint4 wv[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int64_t c = c0 + int64_t{u} * kStride;
      wv[u] = first ? pre[u] : (c < chunks ? __ldg(wr + c) : make_uint4(0, 0, 0, 0));
    }
    first = false;
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int64_t c = c0 + int64_t{u} * kStride;
      if (c >= chunks) break;
      float wf[8], xf[8];
      Bf16x8ToF32(wv[u], wf);
      Bf16x8ToF32(__ldg(reinterpret_cast<const uint4*>(x) + c), xf);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc += wf[i] * xf[i];
    }
  }
  return acc;
}

template <int SPLIT, int UNROLL>
__device__ __forceinline__ void Prefetch(const uint4* wr, int64_t K, int base, uint4 (&pre)[UNROLL]) {
  const int64_t chunks = K / 8;
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) {
    const int64_t c = base + int64_t{u} * 32 * SPLIT;
    pre[u] = c < chunks ? __ldg(wr + c) : make_uint4(0, 0, 0, 0);
  }
}

// Block: kWarpsPerBlock / SPLIT rows, SPLIT warps per row each streaming a share of the row
// (more warps, hence more bytes in flight, for shapes with few rows); the shares meet in shared
// memory.
template <Form F, int SPLIT, int UNROLL>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) SkinnyGemmK(Args a) {
  constexpr int kRowsPerBlock = kWarpsPerBlock / SPLIT;
  __shared__ float part[2][kWarpsPerBlock];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int slice = warp % SPLIT;
  const int64_t m = blockIdx.x * int64_t{kRowsPerBlock} + warp / SPLIT;
  // Let the next projection launch now: it only prefetches weights until this kernel is done.
  GridLaunchDependents();
  const bool live = m < a.M;
  const int base = slice * 32 + lane;
  const uint4* wr = reinterpret_cast<const uint4*>(a.w + (live ? m : 0) * a.K);
  const uint4* wr2 = reinterpret_cast<const uint4*>(a.w + (live ? m + a.M : 0) * a.K);
  uint4 pre[UNROLL];
  [[maybe_unused]] uint4 pre2[UNROLL];
  if (live) {
    Prefetch<SPLIT, UNROLL>(wr, a.K, base, pre);
    if constexpr (F == Form::kSwiGlu) Prefetch<SPLIT, UNROLL>(wr2, a.K, base, pre2);
  }
  GridDependencyWait();  // x is the previous kernel's output
  float acc = 0.f, acc2 = 0.f;
  if (live) {
    acc = WarpSum(DotRow<SPLIT, UNROLL>(wr, a.x, a.K, base, pre));
    if constexpr (F == Form::kSwiGlu) acc2 = WarpSum(DotRow<SPLIT, UNROLL>(wr2, a.x, a.K, base, pre2));
  }
  if constexpr (SPLIT > 1) {
    if (lane == 0) {
      part[0][warp] = acc;
      part[1][warp] = acc2;
    }
    __syncthreads();
    if (slice != 0) return;
    acc = 0.f;
    acc2 = 0.f;
#pragma unroll
    for (int s = 0; s < SPLIT; ++s) {
      acc += part[0][warp + s];
      acc2 += part[1][warp + s];
    }
  }
  if (!live || lane != 0) return;
  if constexpr (F == Form::kSwiGlu) {
    static_cast<bf16*>(a.stack.out[0])[m] = SwiGluB(acc, acc2);
  } else if constexpr (F == Form::kPlainF32) {
    static_cast<float*>(a.stack.out[0])[m] = acc;
  } else if constexpr (F == Form::kPlainBf16) {
    static_cast<bf16*>(a.stack.out[0])[m] = ToB(acc);
  } else {
    // Constant indices only: a runtime index into the parameter struct would copy it to local
    // memory in every thread (measured: +40 % on the 9B in_proj).
    void* out = a.stack.out[0];
    int64_t begin = 0;
#pragma unroll
    for (int i = 1; i < kSkinnyMaxStack; ++i) {
      if (i < a.stack.count && m >= a.stack.end[i - 1]) {
        out = a.stack.out[i];
        begin = a.stack.end[i - 1];
      }
    }
    static_cast<bf16*>(out)[m - begin] = ToB(acc);
  }
}

// Launches a skinny kernel with programmatic dependent launch (see the top of this file) unless
// turned off.
template <typename... P, typename... A>
cudaError_t LaunchPdl(void (*kernel)(P...), unsigned blocks, cudaStream_t s, A... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(blocks);
  cfg.blockDim = dim3(32 * kWarpsPerBlock);
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = g_programmatic ? 1 : 0;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, args...);
  return e != cudaSuccess ? e : LaunchStatus();
}

template <Form F, int SPLIT, int UNROLL>
cudaError_t LaunchOne(const Args& a, cudaStream_t s) {
  constexpr int kRowsPerBlock = kWarpsPerBlock / SPLIT;
  return LaunchPdl(SkinnyGemmK<F, SPLIT, UNROLL>, static_cast<unsigned>((a.M + kRowsPerBlock - 1) / kRowsPerBlock), s,
                   a);
}

// Warps per row and chunks in flight per warp, by shape (measured on H200, docs/PERFORMANCE.md:
// four warps per row won or tied at every 9B projection but the square 4096 x 4096 one, where
// two did; the 248K-row lm_head has warps enough at two).
int ShapeSplit(const Args& a) { return a.M >= 100000 || (a.M <= 4096 && a.K <= 4096) ? 2 : 4; }

template <Form F>
cudaError_t Launch(const Args& a, cudaStream_t s) {
  int split = ShapeSplit(a);
  int unroll = 4;
  if (g_force_split > 0) split = g_force_split;
  if (g_force_unroll > 0) unroll = g_force_unroll;
  if (unroll == 8) {
    if (split == 1) return LaunchOne<F, 1, 8>(a, s);
    if (split == 2) return LaunchOne<F, 2, 8>(a, s);
    return LaunchOne<F, 4, 8>(a, s);
  }
  if (split == 1) return LaunchOne<F, 1, 4>(a, s);
  if (split == 2) return LaunchOne<F, 2, 4>(a, s);
  return LaunchOne<F, 4, 4>(a, s);
}

// Tensor-core form for 1..16 rows (decode, verify, small batched verify): a warp owns a tile of 16 weight rows and a
// share of K; mma.sync m16n8k16 (bf16 in, fp32 accumulate) multiplies the tile with up to 8 (two
// tiles: 16) x rows. The reduction over K is permuted so that every lane loads 16 contiguous bytes
// per weight row: within each 32-element block, lane (g, t) supplies k-positions 8t..8t+3 to the
// first mma and 8t+4..8t+7 to the second, and x is loaded with the same permutation, so the dot
// products are unchanged. Each output element's sum depends only on its own weight row and x row
// (mma computes each element on its own; the K shares meet in a fixed order), so a row's result
// is the same whether 1 or 16 rows share the call: verify logits equal decode logits bit for bit.
// CUDA cores at 9 rows were FMA- and L1-bound (2.3x a decode step on H100); the tensor cores are not.

// Weight rows per warp: 16 (one tile), gate + up tiles for the SwiGLU form. x rows: NT * 8.
// 32-element blocks in flight per lane and weight row: fewer as more x rows need registers (the
// order of the sums does not depend on it).
template <int NT>
__host__ __device__ constexpr int MmaUnroll() { return NT <= 2 ? 2 : 1; }
// Consecutive 32-element blocks a lane takes per step: its four lanes then read a whole 128-byte
// line of each weight row (two 64-byte halves back to back) instead of half of one.
constexpr int kMmaPair = 2;

// A lane's weights for U steps of P 32-element blocks (step s0 + u * SPLIT) of each tile's two rows;
// blocks past K are zeros. Held by value so a step's copy streams while the previous multiplies.
template <int U, int P, int kTiles>
struct WeightSteps {
  uint4 v[U][P][kTiles][2];
  template <int SPLIT>
  __device__ __forceinline__ void Load(const uint4* const (&wr)[kTiles][2], int64_t s0, int64_t blocks) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const int64_t b = (s0 + int64_t{u} * SPLIT) * P + p;
#pragma unroll
        for (int tile = 0; tile < kTiles; ++tile)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            v[u][p][tile][h] = b < blocks ? __ldg(wr[tile][h] + b * 4) : make_uint4(0, 0, 0, 0);
          }
      }
    }
  }
};

// The epilogue of the tensor-core kernels: element e of x tile j of a lane holds weight row
// row0 + g + 8 * (e >> 1) and x row 8 * j + 2 * t + (e & 1); the form decides what is stored.
template <Form F, int kTiles, int NT>
__device__ __forceinline__ void StoreTiles(const Args& a, const float (&acc)[kTiles][NT][4], int64_t row0, int lane,
                                           int n) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int64_t m = row0 + g + 8 * (e >> 1);
    if (m >= a.M) continue;
    void* out = a.stack.out[0];
    int64_t begin = 0, width = a.M;
    if constexpr (F == Form::kStacked) {
      // Constant indices only (see SkinnyGemmK).
      width = a.stack.end[0];
#pragma unroll
      for (int i = 1; i < kSkinnyMaxStack; ++i) {
        if (i < a.stack.count && m >= a.stack.end[i - 1]) {
          out = a.stack.out[i];
          begin = a.stack.end[i - 1];
          width = a.stack.end[i] - begin;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int r = 8 * j + 2 * t + (e & 1);
      if (r >= n) continue;
      if constexpr (F == Form::kSwiGlu) {
        static_cast<bf16*>(out)[r * a.M + m] = SwiGluB(acc[0][j][e], acc[kTiles - 1][j][e]);
      } else if constexpr (F == Form::kPlainF32) {
        static_cast<float*>(out)[r * a.M + m] = acc[0][j][e];
      } else {
        static_cast<bf16*>(out)[r * width + (m - begin)] = ToB(acc[0][j][e]);
      }
    }
  }
}

template <Form F, int SPLIT, int NT>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) SkinnyMmaK(Args a, int n) {
  constexpr int U = MmaUnroll<NT>();                         // steps in flight
  constexpr int P = kMmaPair;
  constexpr int kTiles = F == Form::kSwiGlu ? 2 : 1;        // weight tiles per warp
  constexpr int kTilesPerBlock = kWarpsPerBlock / SPLIT;    // 16-row tiles per block
  __shared__ float part[kWarpsPerBlock][32][4];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int slice = warp % SPLIT;
  const int64_t row0 = (blockIdx.x * int64_t{kTilesPerBlock} + warp / SPLIT) * 16;
  const int64_t blocks = a.K / 32, steps = (blocks + P - 1) / P;
  const uint4* wr[kTiles][2];
  LaneWeightRows(a.w, row0, a.M, a.K, lane, wr);
  GridLaunchDependents();
  WeightSteps<U, P, kTiles> wv;
  auto load_w = [&](int64_t s0) { wv.template Load<SPLIT>(wr, s0, blocks); };
  load_w(slice);  // weights first: they do not depend on the kernel before this one
  GridDependencyWait();
  float acc[kTiles][NT][4];
#pragma unroll
  for (int tile = 0; tile < kTiles; ++tile)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[tile][j][e] = 0.f;
  const uint4* xr[NT];
  bool xlive[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    xlive[j] = j * 8 + g < n;
    xr[j] = reinterpret_cast<const uint4*>(a.x + (xlive[j] ? int64_t{j * 8 + g} * a.K : 0)) + t;
  }
  for (int64_t s0 = slice; s0 < steps; s0 += int64_t{SPLIT} * U) {
    uint4 xv[U][P][NT];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const int64_t b = (s0 + int64_t{u} * SPLIT) * P + p;
#pragma unroll
        for (int j = 0; j < NT; ++j)
          xv[u][p][j] = b < blocks && xlive[j] ? __ldg(xr[j] + b * 4) : make_uint4(0, 0, 0, 0);
      }
    const WeightSteps<U, P, kTiles> cur = wv;
    load_w(s0 + int64_t{SPLIT} * U);  // the next steps stream while these multiply
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (s0 + int64_t{u} * SPLIT >= steps) break;
#pragma unroll
      for (int p = 0; p < P; ++p) {
        // A block past K (odd block count) is zero on both sides and adds exact zeros.
#pragma unroll
        for (int tile = 0; tile < kTiles; ++tile) {
#pragma unroll
          for (int j = 0; j < NT; ++j) MmaKBlock(acc[tile][j], cur.v[u][p][tile][0], cur.v[u][p][tile][1], xv[u][p][j]);
        }
      }
    }
  }
  if constexpr (SPLIT > 1) {
    SumKShares<SPLIT>(acc, part, warp, lane, slice);
    if (slice != 0) return;
  }
  StoreTiles<F>(a, acc, row0, lane, n);
}

template <Form F, int SPLIT, int NT>
cudaError_t LaunchMmaOne(const Args& a, int n, cudaStream_t s) {
  constexpr int kTilesPerBlock = kWarpsPerBlock / SPLIT;
  const int64_t tiles = (a.M + 15) / 16;
  return LaunchPdl(SkinnyMmaK<F, SPLIT, NT>, static_cast<unsigned>((tiles + kTilesPerBlock - 1) / kTilesPerBlock), s, a,
                   n);
}

// 17..64 rows (a batched verify of several sequences), bit for bit the rows SkinnyMmaK gives
// one at a time: the same K partition (slice s takes steps s, s + SPLIT, ...; a step is P
// blocks of 32), the same mma chain per slice, the slices summed in slice order from 0. Only
// the placement changes: the SPLIT slices of a tile run in the SPLIT blocks of a thread-block
// cluster; the 8 warps of a block own 8 tiles of one slice and share that slice's x rows, staged
// once in shared memory (x re-read per warp from L2 took a 40-row form to 2x cuBLAS); the slices
// meet through distributed shared memory, read by the cluster's first block.
constexpr int kWideMaxRows = 64;
constexpr int kWideUnroll = 2;
constexpr size_t kWideSmemLimit = 200 * 1024;

// Steps of slice 0 (the most any slice has) and the shared memory a launch needs: the slice's x
// rows, later reused for the partial sums.
inline int64_t WideLocalSteps(int64_t K, int split) {
  const int64_t steps = (K / 32 + kMmaPair - 1) / kMmaPair;
  return (steps + split - 1) / split;
}
inline size_t WideSmem(int64_t K, int split, int nt, int tiles) {
  // 64 bytes (4 x 16) of each of the nt * 8 rows per 32-element block.
  const size_t x = static_cast<size_t>(WideLocalSteps(K, split)) * kMmaPair * nt * 8 * 4 * sizeof(uint4);
  const size_t part = static_cast<size_t>(kWarpsPerBlock) * tiles * nt * 4 * 32 * sizeof(float);
  return x > part ? x : part;
}
inline int WideTiles(int64_t n) { return n <= 32 ? 4 : 8; }

template <Form F, int SPLIT, int NT>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) SkinnyMmaWideK(Args a, int n) {
  namespace cg = cooperative_groups;
  extern __shared__ uint4 wide_smem[];
  constexpr int U = kWideUnroll;
  constexpr int P = kMmaPair;
  constexpr int kTiles = F == Form::kSwiGlu ? 2 : 1;
  constexpr int R8 = NT * 8;
  cg::cluster_group cluster = cg::this_cluster();
  const int slice = static_cast<int>(cluster.block_rank());
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t row0 = (blockIdx.x * int64_t{kWarpsPerBlock} + warp) * 16;
  const int64_t blocks = a.K / 32, steps = (blocks + P - 1) / P;
  const int64_t local = steps > slice ? (steps - slice + SPLIT - 1) / SPLIT : 0;
  const uint4* wr[kTiles][2];
  LaneWeightRows(a.w, row0, a.M, a.K, lane, wr);
  GridLaunchDependents();
  WeightSteps<U, P, kTiles> wv;
  auto load_w = [&](int64_t s0) { wv.template Load<SPLIT>(wr, s0, blocks); };
  load_w(slice);  // weights first: they do not depend on the kernel before this one
  GridDependencyWait();
  // This slice's x: entry ((q * P + p) * R8 + r) * 4 + c is 16-byte column c of x row r in block
  // (slice + q * SPLIT) * P + p; rows past n and blocks past K are zeros, as SkinnyMmaK loads them.
  const uint4* x4 = reinterpret_cast<const uint4*>(a.x);
  const int64_t row_u4 = a.K / 8, entries = local * P * R8 * 4;
  for (int64_t e = threadIdx.x; e < entries; e += blockDim.x) {
    const int c = static_cast<int>(e & 3);
    const int64_t rest = e >> 2;
    const int r = static_cast<int>(rest % R8);
    const int64_t qp = rest / R8;
    const int64_t b = (slice + (qp / P) * SPLIT) * P + qp % P;
    wide_smem[e] = r < n && b < blocks ? __ldg(x4 + r * row_u4 + b * 4 + c) : make_uint4(0, 0, 0, 0);
  }
  __syncthreads();
  float acc[kTiles][NT][4];
#pragma unroll
  for (int tile = 0; tile < kTiles; ++tile)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[tile][j][e] = 0.f;
  for (int64_t s0 = slice; s0 < steps; s0 += int64_t{SPLIT} * U) {
    const WeightSteps<U, P, kTiles> cur = wv;
    load_w(s0 + int64_t{SPLIT} * U);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t step = s0 + int64_t{u} * SPLIT;
      if (step >= steps) break;
      const int64_t q = (step - slice) / SPLIT;
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const uint4* xq = wide_smem + (q * P + p) * R8 * 4;
#pragma unroll
        for (int tile = 0; tile < kTiles; ++tile) {
#pragma unroll
          for (int j = 0; j < NT; ++j) {
            MmaKBlock(acc[tile][j], cur.v[u][p][tile][0], cur.v[u][p][tile][1], xq[(j * 8 + g) * 4 + t]);
          }
        }
      }
    }
  }
  if constexpr (SPLIT > 1) {
    // The x rows are done with: their space holds this block's partial sums for the cluster.
    __syncthreads();
    float* part = reinterpret_cast<float*>(wide_smem);
    auto at = [&](int tile, int j, int e) { return (((warp * kTiles + tile) * NT + j) * 4 + e) * 32 + lane; };
#pragma unroll
    for (int tile = 0; tile < kTiles; ++tile)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) part[at(tile, j, e)] = acc[tile][j][e];
    cluster.sync();
    if (slice == 0) {
#pragma unroll
      for (int tile = 0; tile < kTiles; ++tile)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float v = 0.f;  // SumKShares's order: 0 + share 0 + share 1 + ...
#pragma unroll
            for (int sl = 0; sl < SPLIT; ++sl) v += cluster.map_shared_rank(part, sl)[at(tile, j, e)];
            acc[tile][j][e] = v;
          }
    }
    cluster.sync();  // every block keeps its shared memory until the first one has read it
    if (slice != 0) return;
  }
  StoreTiles<F>(a, acc, row0, lane, n);
}

template <Form F, int SPLIT, int NT>
cudaError_t LaunchWideOne(const Args& a, int n, cudaStream_t s) {
  constexpr int kTiles = F == Form::kSwiGlu ? 2 : 1;
  static const cudaError_t attr = cudaFuncSetAttribute(
      SkinnyMmaWideK<F, SPLIT, NT>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kWideSmemLimit));
  if (attr != cudaSuccess) return attr;
  const int64_t tiles = (a.M + 15) / 16;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>((tiles + kWarpsPerBlock - 1) / kWarpsPerBlock), SPLIT);
  cfg.blockDim = dim3(32 * kWarpsPerBlock);
  cfg.dynamicSmemBytes = WideSmem(a.K, SPLIT, NT, kTiles);
  cfg.stream = s;
  cudaLaunchAttribute attrs[2];
  attrs[0].id = cudaLaunchAttributeClusterDimension;
  attrs[0].val.clusterDim.x = 1;
  attrs[0].val.clusterDim.y = SPLIT;
  attrs[0].val.clusterDim.z = 1;
  attrs[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attrs[1].val.programmaticStreamSerializationAllowed = g_programmatic ? 1 : 0;
  cfg.attrs = attrs;
  cfg.numAttrs = 2;
  const cudaError_t e = cudaLaunchKernelEx(&cfg, SkinnyMmaWideK<F, SPLIT, NT>, a, n);
  return e != cudaSuccess ? e : LaunchStatus();
}

template <Form F, int SPLIT>
cudaError_t LaunchWideN(const Args& a, int n, cudaStream_t s) {
  return WideTiles(n) == 4 ? LaunchWideOne<F, SPLIT, 4>(a, n, s) : LaunchWideOne<F, SPLIT, 8>(a, n, s);
}

template <Form F>
cudaError_t LaunchWide(const Args& a, int n, cudaStream_t s) {
  return WithMmaSplit(a.K, [&](auto split) { return LaunchWideN<F, decltype(split)::value>(a, n, s); });
}

template <Form F, int SPLIT>
cudaError_t LaunchMmaN(const Args& a, int n, cudaStream_t s) {
  // Up to 16 rows. At 40 rows (batch 8, k = 4) every warp re-read 40 x rows from L2 per weight
  // block and the step took 2x cuBLAS's (H100), so batched verify past 16 rows goes to cuBLAS.
  return n <= 8 ? LaunchMmaOne<F, SPLIT, 1>(a, n, s) : LaunchMmaOne<F, SPLIT, 2>(a, n, s);
}

template <Form F>
cudaError_t LaunchMma(const Args& a, int n, cudaStream_t s) {
  return WithMmaSplit(a.K, [&](auto split) { return LaunchMmaN<F, decltype(split)::value>(a, n, s); });
}

// Every row count on the tensor-core kernel (so decode and verify agree bit for bit); the CUDA-core
// one-row kernel on request (benchmarks) or where K is not a multiple of 32.
template <Form F>
cudaError_t LaunchRows(const Args& a, int64_t n, cudaStream_t s) {
  if (n == 1 && (g_cuda_core_decode || a.K % 32 != 0)) return Launch<F>(a, s);
  if (n > kSkinnyUseRows) return LaunchWide<F>(a, static_cast<int>(n), s);
  return LaunchMma<F>(a, static_cast<int>(n), s);
}

bool Aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void SetProgrammaticLaunch(bool on) { g_programmatic = on; }
void SetCudaCoreDecode(bool on) { g_cuda_core_decode = on; }
void SetSkinnyWide(bool on) { g_wide = on; }
void SetSkinnyVariant(int split, int unroll) {
  g_force_split = split == 1 || split == 2 || split == 4 ? split : 0;
  g_force_unroll = unroll == 4 || unroll == 8 ? unroll : 0;
}

bool SkinnyGemmApplies(int64_t n, int64_t K, const void* x, const void* w) {
  // Decode, verify and batched verify up to 16 rows; larger batches and prefill go to cuBLAS.
  // Rows > 1 need K % 32 == 0 (the tensor-core form's blocks).
  if (n > kSkinnyUseRows) {
    // The wide form (SkinnyMmaWideK) while its x slice fits in shared memory (SwiGLU's two tiles
    // are the larger partial buffer), and while it is on.
    return g_wide && n <= kWideMaxRows && K % 32 == 0 && Aligned(x) && Aligned(w) &&
           WideSmem(K, MmaSplit(K), WideTiles(n), 2) <= kWideSmemLimit;
  }
  return n >= 1 && K % 8 == 0 && (n == 1 || K % 32 == 0) && Aligned(x) && Aligned(w);
}

cudaError_t SkinnyGemm(const bf16* x, const bf16* w, void* out, bool out_f32, int64_t n, int64_t M, int64_t K,
                       cudaStream_t s) {
  SPECD_CHECK_ARG(x && w && out && M > 0 && K > 0 && SkinnyGemmApplies(n, K, x, w));
  Args a{x, w, M, K, {}};
  a.stack.count = 1;
  a.stack.end[0] = M;
  a.stack.out[0] = out;
  return out_f32 ? LaunchRows<Form::kPlainF32>(a, n, s) : LaunchRows<Form::kPlainBf16>(a, n, s);
}

cudaError_t SkinnyGemmStacked(const bf16* x, const bf16* w, const SkinnyStack& stack, int64_t n, int64_t K,
                              cudaStream_t s) {
  SPECD_CHECK_ARG(x && w && stack.count >= 1 && stack.count <= kSkinnyMaxStack && K > 0 &&
                  SkinnyGemmApplies(n, K, x, w));
  int64_t prev = 0;
  for (int i = 0; i < stack.count; ++i) {
    SPECD_CHECK_ARG(stack.out[i] != nullptr && stack.end[i] > prev);
    prev = stack.end[i];
  }
  Args a{x, w, prev, K, stack};
  return LaunchRows<Form::kStacked>(a, n, s);
}

cudaError_t SkinnyGemmSwiGlu(const bf16* x, const bf16* w_gate_up, bf16* out, int64_t n, int64_t I, int64_t K,
                             cudaStream_t s) {
  SPECD_CHECK_ARG(x && w_gate_up && out && I > 0 && K > 0 && SkinnyGemmApplies(n, K, x, w_gate_up));
  Args a{x, w_gate_up, I, K, {}};
  a.stack.count = 1;
  a.stack.end[0] = I;
  a.stack.out[0] = out;
  return LaunchRows<Form::kSwiGlu>(a, n, s);
}

}  // namespace specd::kernels
