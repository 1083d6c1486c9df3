// Skinny GEMM for decode: out[n, m] = x[n, K] · w[m, K]^T with n <= kSkinnyUseRows rows.
// Batch-1 decode is bound by streaming w once; cuBLAS's general kernels reach a fraction of the
// bandwidth at these shapes. One warp per output row m: each lane streams 16-byte chunks of w's
// row (coalesced across the warp, kUnroll chunks in flight) and multiplies them with the same
// chunk of every x row (x is small and stays in L1/L2), keeping NMAX fp32 accumulators; a warp
// reduction finishes each dot product.
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
constexpr int64_t kSkinnyUseRows = 1;
constexpr int kUnroll = 4;
bool g_programmatic = true;

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
  int n;
  int64_t M;  // warps' rows (kSwiGlu: I, and each warp also reads row I + m)
  int64_t K;
  SkinnyStack stack;  // kStacked: segment ends and outputs; kPlain*/kSwiGlu: out = stack.out[0]
};

// acc[r] += w_row · x_r over the whole row; the first kUnroll chunks come from `pre`.
template <int NMAX>
__device__ __forceinline__ void DotRows(const uint4* wr, const bf16* x, int n, int64_t K, int lane, uint4 (&pre)[kUnroll],
                                        float (&acc)[NMAX]) {
  const int64_t chunks = K / 8;
  bool first = true;
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * kUnroll) {
    uint4 wv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + u * 32;
      wv[u] = first ? pre[u] : (c < chunks ? __ldg(wr + c) : make_uint4(0, 0, 0, 0));
    }
    first = false;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + u * 32;
      if (c >= chunks) break;
      float wf[8];
      Bf16x8ToF32(wv[u], wf);
#pragma unroll
      for (int r = 0; r < NMAX; ++r) {
        if (r >= n) break;
        float xf[8];
        Bf16x8ToF32(__ldg(reinterpret_cast<const uint4*>(x + r * K) + c), xf);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[r] += wf[i] * xf[i];
      }
    }
  }
}

__device__ __forceinline__ void Prefetch(const uint4* wr, int64_t K, int lane, uint4 (&pre)[kUnroll]) {
  const int64_t chunks = K / 8;
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t c = lane + u * 32;
    pre[u] = c < chunks ? __ldg(wr + c) : make_uint4(0, 0, 0, 0);
  }
}

template <int NMAX, Form F>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) SkinnyGemmK(Args a) {
  const int lane = threadIdx.x & 31;
  const int64_t m = blockIdx.x * int64_t{kWarpsPerBlock} + (threadIdx.x >> 5);
  // Let the next projection launch now: it only prefetches weights until this kernel is done.
  GridLaunchDependents();
  if (m >= a.M) {
    GridDependencyWait();
    return;
  }
  const uint4* wr = reinterpret_cast<const uint4*>(a.w + m * a.K);
  uint4 pre[kUnroll];
  [[maybe_unused]] uint4 pre2[kUnroll];
  Prefetch(wr, a.K, lane, pre);
  const uint4* wr2 = reinterpret_cast<const uint4*>(a.w + (m + a.M) * a.K);
  if constexpr (F == Form::kSwiGlu) Prefetch(wr2, a.K, lane, pre2);
  GridDependencyWait();  // x is the previous kernel's output
  float acc[NMAX];
#pragma unroll
  for (int r = 0; r < NMAX; ++r) acc[r] = 0.f;
  DotRows<NMAX>(wr, a.x, a.n, a.K, lane, pre, acc);
  if constexpr (F == Form::kSwiGlu) {
    float acc2[NMAX];
#pragma unroll
    for (int r = 0; r < NMAX; ++r) acc2[r] = 0.f;
    DotRows<NMAX>(wr2, a.x, a.n, a.K, lane, pre2, acc2);
#pragma unroll
    for (int r = 0; r < NMAX; ++r) {
      if (r >= a.n) break;
      // gate and up rounded to bf16 first, as the unfused GEMMs + SwiGLU kernel do.
      const float g = ToF(ToB(WarpSum(acc[r]))), u = ToF(ToB(WarpSum(acc2[r])));
      if (lane == 0) static_cast<bf16*>(a.stack.out[0])[r * a.M + m] = ToB(SiluF(g) * u);
    }
    return;
  }
  int seg = 0;
  int64_t begin = 0;
  if constexpr (F == Form::kStacked) {
    while (seg + 1 < a.stack.count && m >= a.stack.end[seg]) begin = a.stack.end[seg++];
  }
  const int64_t width = F == Form::kStacked ? a.stack.end[seg] - begin : a.M;
#pragma unroll
  for (int r = 0; r < NMAX; ++r) {
    if (r >= a.n) break;
    const float v = WarpSum(acc[r]);
    if (lane != 0) continue;
    if constexpr (F == Form::kPlainF32) {
      static_cast<float*>(a.stack.out[0])[r * width + m] = v;
    } else {
      static_cast<bf16*>(a.stack.out[seg])[r * width + (m - begin)] = ToB(v);
    }
  }
}

template <int NMAX, Form F>
cudaError_t LaunchOne(const Args& a, cudaStream_t s) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>((a.M + kWarpsPerBlock - 1) / kWarpsPerBlock));
  cfg.blockDim = dim3(32 * kWarpsPerBlock);
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = g_programmatic ? 1 : 0;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const cudaError_t e = cudaLaunchKernelEx(&cfg, SkinnyGemmK<NMAX, F>, a);
  return e != cudaSuccess ? e : LaunchStatus();
}

template <Form F>
cudaError_t Launch(const Args& a, cudaStream_t s) {
  if (a.n <= 1) return LaunchOne<1, F>(a, s);
  if (a.n <= 2) return LaunchOne<2, F>(a, s);
  if (a.n <= 4) return LaunchOne<4, F>(a, s);
  if (a.n <= 8) return LaunchOne<8, F>(a, s);
  return LaunchOne<16, F>(a, s);
}

bool Aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void SetProgrammaticLaunch(bool on) { g_programmatic = on; }

bool SkinnyGemmApplies(int64_t n, int64_t K, const void* x, const void* w) {
  // Measured on H200 (docs/PERFORMANCE.md): a clear win over cuBLAS at one row (decode), a loss
  // from two rows on (each weight chunk then meets n x-chunks from L1), so verify stays on cuBLAS
  // until this kernel stages x in shared memory.
  return n >= 1 && n <= kSkinnyUseRows && K % 8 == 0 && Aligned(x) && Aligned(w);
}

cudaError_t SkinnyGemm(const bf16* x, const bf16* w, void* out, bool out_f32, int64_t n, int64_t M, int64_t K,
                       cudaStream_t s) {
  SPECD_CHECK_ARG(x && w && out && M > 0 && K > 0 && SkinnyGemmApplies(n, K, x, w));
  Args a{x, w, static_cast<int>(n), M, K, {}};
  a.stack.count = 1;
  a.stack.end[0] = M;
  a.stack.out[0] = out;
  return out_f32 ? Launch<Form::kPlainF32>(a, s) : Launch<Form::kPlainBf16>(a, s);
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
  Args a{x, w, static_cast<int>(n), prev, K, stack};
  return Launch<Form::kStacked>(a, s);
}

cudaError_t SkinnyGemmSwiGlu(const bf16* x, const bf16* w_gate_up, bf16* out, int64_t n, int64_t I, int64_t K,
                             cudaStream_t s) {
  SPECD_CHECK_ARG(x && w_gate_up && out && I > 0 && K > 0 && SkinnyGemmApplies(n, K, x, w_gate_up));
  Args a{x, w_gate_up, static_cast<int>(n), I, K, {}};
  a.stack.count = 1;
  a.stack.end[0] = I;
  a.stack.out[0] = out;
  return Launch<Form::kSwiGlu>(a, s);
}

}  // namespace specd::kernels
