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
#include "common.cuh"
#include "specd/kernels.h"

namespace specd::kernels {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int64_t kSkinnyUseRows = 16;
bool g_programmatic = true;
int g_force_split = 0, g_force_unroll = 0;

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
    // gate and up rounded to bf16 first, as the unfused GEMMs + SwiGLU kernel do.
    const float g = ToF(ToB(acc)), u = ToF(ToB(acc2));
    static_cast<bf16*>(a.stack.out[0])[m] = ToB(SiluF(g) * u);
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

template <Form F, int SPLIT, int UNROLL>
cudaError_t LaunchOne(const Args& a, cudaStream_t s) {
  constexpr int kRowsPerBlock = kWarpsPerBlock / SPLIT;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>((a.M + kRowsPerBlock - 1) / kRowsPerBlock));
  cfg.blockDim = dim3(32 * kWarpsPerBlock);
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = g_programmatic ? 1 : 0;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const cudaError_t e = cudaLaunchKernelEx(&cfg, SkinnyGemmK<F, SPLIT, UNROLL>, a);
  return e != cudaSuccess ? e : LaunchStatus();
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

// Verify rows (2..16): each warp streams R weight rows of its K-slice at once and multiplies every
// weight chunk with the same chunk of each of the n x rows, so x is read R times less often than
// with one row per warp (one row per warp made a 9-token verify L1-bound). Each (weight row, x row)
// dot product is summed exactly as the one-row kernel sums it (same warps per row, same chunks
// per lane in the same order, same reductions), so a verify row's logits are bitwise those of a
// decode step at the same position: the output never depends on how many tokens share the call.
template <Form F, int SPLIT, int NMAX>
struct Multi {
  static constexpr int kW = 32 / NMAX;                              // weight rows per warp
  static constexpr int kR = F == Form::kSwiGlu ? kW / 2 : kW;       // output rows per warp
  static constexpr int kGroups = kWarpsPerBlock / SPLIT;            // row groups per block
  static constexpr int kRowsPerBlock = kGroups * kR;
};

template <Form F, int SPLIT, int NMAX>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) SkinnyMultiK(Args a, int n) {
  using P = Multi<F, SPLIT, NMAX>;
  constexpr int W = P::kW, R = P::kR;
  __shared__ float part[kWarpsPerBlock][W][NMAX];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int slice = warp % SPLIT, grp = warp / SPLIT;
  const int64_t m0 = blockIdx.x * int64_t{P::kRowsPerBlock} + int64_t{grp} * R;
  const int64_t chunks = a.K / 8;
  constexpr int kStride = 32 * SPLIT;
  const uint4* wr[W];
  bool live[W];
#pragma unroll
  for (int w = 0; w < W; ++w) {
    const int64_t m = m0 + (w % R);
    live[w] = m < a.M;
    const int64_t row = F == Form::kSwiGlu && w >= R ? m + a.M : m;
    wr[w] = reinterpret_cast<const uint4*>(a.w + (live[w] ? row : 0) * a.K);
  }
  float acc[W][NMAX];
#pragma unroll
  for (int w = 0; w < W; ++w)
#pragma unroll
    for (int r = 0; r < NMAX; ++r) acc[w][r] = 0.f;
  const uint4* xr = reinterpret_cast<const uint4*>(a.x);
  const int64_t xrow = chunks;  // x row stride in 16-byte chunks
  for (int64_t c = slice * 32 + lane; c < chunks; c += 2 * kStride) {
    // Two chunks per lane in flight for every weight row.
    uint4 wv[2][W];
    const bool second = c + kStride < chunks;
#pragma unroll
    for (int w = 0; w < W; ++w) {
      wv[0][w] = live[w] ? __ldg(wr[w] + c) : make_uint4(0, 0, 0, 0);
      wv[1][w] = live[w] && second ? __ldg(wr[w] + c + kStride) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (h == 1 && !second) break;
      const int64_t cc = c + h * kStride;
#pragma unroll
      for (int r = 0; r < NMAX; ++r) {
        if (r >= n) break;
        float xf[8];
        Bf16x8ToF32(__ldg(xr + r * xrow + cc), xf);
#pragma unroll
        for (int w = 0; w < W; ++w) {
          float wf[8];
          Bf16x8ToF32(wv[h][w], wf);
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[w][r] += wf[i] * xf[i];
        }
      }
    }
  }
#pragma unroll
  for (int w = 0; w < W; ++w)
#pragma unroll
    for (int r = 0; r < NMAX; ++r) acc[w][r] = WarpSum(acc[w][r]);
  if constexpr (SPLIT > 1) {
    if (lane == 0) {
#pragma unroll
      for (int w = 0; w < W; ++w)
#pragma unroll
        for (int r = 0; r < NMAX; ++r) part[warp][w][r] = acc[w][r];
    }
    __syncthreads();
    if (slice != 0) return;
#pragma unroll
    for (int w = 0; w < W; ++w) {
#pragma unroll
      for (int r = 0; r < NMAX; ++r) {
        float v = 0.f;
#pragma unroll
        for (int s = 0; s < SPLIT; ++s) v += part[warp + s][w][r];
        acc[w][r] = v;
      }
    }
  }
  if (lane != 0) return;
#pragma unroll
  for (int w = 0; w < R; ++w) {
    const int64_t m = m0 + w;
    if (m >= a.M) break;
    void* out = a.stack.out[0];
    int64_t begin = 0, width = a.M;
    if constexpr (F == Form::kStacked) {
#pragma unroll
      for (int i = 1; i < kSkinnyMaxStack; ++i) {
        if (i < a.stack.count && m >= a.stack.end[i - 1]) {
          out = a.stack.out[i];
          begin = a.stack.end[i - 1];
        }
      }
      // The segment's end: the first end past m (constant indices only, see SkinnyGemmK).
      width = a.stack.end[0] - begin;
#pragma unroll
      for (int i = 1; i < kSkinnyMaxStack; ++i) {
        if (i < a.stack.count && m >= a.stack.end[i - 1]) width = a.stack.end[i] - begin;
      }
    }
#pragma unroll
    for (int r = 0; r < NMAX; ++r) {
      if (r >= n) break;
      if constexpr (F == Form::kSwiGlu) {
        const float g = ToF(ToB(acc[w][r])), u = ToF(ToB(acc[w + R][r]));
        static_cast<bf16*>(out)[r * a.M + m] = ToB(SiluF(g) * u);
      } else if constexpr (F == Form::kPlainF32) {
        static_cast<float*>(out)[r * a.M + m] = acc[w][r];
      } else {
        static_cast<bf16*>(out)[r * width + (m - begin)] = ToB(acc[w][r]);
      }
    }
  }
}

template <Form F, int SPLIT, int NMAX>
cudaError_t LaunchMulti(const Args& a, int n, cudaStream_t s) {
  using P = Multi<F, SPLIT, NMAX>;
  const unsigned blocks = static_cast<unsigned>((a.M + P::kRowsPerBlock - 1) / P::kRowsPerBlock);
  SkinnyMultiK<F, SPLIT, NMAX><<<blocks, 32 * kWarpsPerBlock, 0, s>>>(a, n);
  return LaunchStatus();
}

template <Form F, int SPLIT>
cudaError_t LaunchMultiN(const Args& a, int n, cudaStream_t s) {
  if (n <= 4) return LaunchMulti<F, SPLIT, 4>(a, n, s);
  if (n <= 8) return LaunchMulti<F, SPLIT, 8>(a, n, s);
  return LaunchMulti<F, SPLIT, 16>(a, n, s);
}

// One row: the decode kernel (variants for the benchmark sweep); more: the multi-row kernel with
// the one-row kernel's shape rule, which bitwise equality with it needs.
template <Form F>
cudaError_t LaunchRows(const Args& a, int64_t n, cudaStream_t s) {
  if (n == 1) return Launch<F>(a, s);
  if (ShapeSplit(a) == 2) return LaunchMultiN<F, 2>(a, static_cast<int>(n), s);
  return LaunchMultiN<F, 4>(a, static_cast<int>(n), s);
}

bool Aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void SetProgrammaticLaunch(bool on) { g_programmatic = on; }
void SetSkinnyVariant(int split, int unroll) {
  g_force_split = split == 1 || split == 2 || split == 4 ? split : 0;
  g_force_unroll = unroll == 4 || unroll == 8 ? unroll : 0;
}

bool SkinnyGemmApplies(int64_t n, int64_t K, const void* x, const void* w) {
  // Decode (one row) and verify (up to 16 rows, k <= 15); larger batches and prefill go to cuBLAS.
  return n >= 1 && n <= kSkinnyUseRows && K % 8 == 0 && Aligned(x) && Aligned(w);
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
