// Skinny GEMM for decode and verify: out[n, m] = x[n, K] · w[m, K]^T with n <= 16 rows.
// Batch-1 decode and k+1-token verify are bound by streaming w once; cuBLAS's general kernels
// reach a fraction of the bandwidth at these shapes. One warp per output row m: each lane
// streams 16-byte chunks of w's row (coalesced across the warp, 4 chunks in flight) and
// multiplies them with the same chunk of every x row (x is small and stays in L1/L2), keeping
// NMAX fp32 accumulators; a warp reduction finishes each dot product.
#include "common.cuh"
#include "specd/kernels.h"

namespace specd::kernels {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int64_t kSkinnyUseRows = 1;
constexpr int kUnroll = 4;

__device__ __forceinline__ void Bf16x8ToF32(const uint4& u, float (&f)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 p = __bfloat1622float2(h[i]);
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}

template <int NMAX, typename OutT>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    SkinnyGemmK(const bf16* __restrict__ x, const bf16* __restrict__ w, OutT* __restrict__ out, int n, int64_t M,
                int64_t K) {
  const int lane = threadIdx.x & 31;
  const int64_t m = blockIdx.x * int64_t{kWarpsPerBlock} + (threadIdx.x >> 5);
  if (m >= M) return;
  const uint4* wr = reinterpret_cast<const uint4*>(w + m * K);
  const int64_t chunks = K / 8;  // 16-byte chunks per row
  float acc[NMAX];
#pragma unroll
  for (int r = 0; r < NMAX; ++r) acc[r] = 0.f;
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * kUnroll) {
    uint4 wv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + u * 32;
      wv[u] = c < chunks ? __ldg(wr + c) : make_uint4(0, 0, 0, 0);
    }
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
#pragma unroll
  for (int r = 0; r < NMAX; ++r) {
    if (r >= n) break;
    const float v = WarpSum(acc[r]);
    if (lane == 0) out[r * M + m] = static_cast<OutT>(v);
  }
}

template <typename OutT>
cudaError_t Launch(const bf16* x, const bf16* w, OutT* out, int n, int64_t M, int64_t K, cudaStream_t s) {
  const unsigned blocks = static_cast<unsigned>((M + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const int threads = 32 * kWarpsPerBlock;
  if (n <= 1) {
    SkinnyGemmK<1, OutT><<<blocks, threads, 0, s>>>(x, w, out, n, M, K);
  } else if (n <= 2) {
    SkinnyGemmK<2, OutT><<<blocks, threads, 0, s>>>(x, w, out, n, M, K);
  } else if (n <= 4) {
    SkinnyGemmK<4, OutT><<<blocks, threads, 0, s>>>(x, w, out, n, M, K);
  } else if (n <= 8) {
    SkinnyGemmK<8, OutT><<<blocks, threads, 0, s>>>(x, w, out, n, M, K);
  } else {
    SkinnyGemmK<16, OutT><<<blocks, threads, 0, s>>>(x, w, out, n, M, K);
  }
  return LaunchStatus();
}

}  // namespace

bool SkinnyGemmApplies(int64_t n, int64_t K, const void* x, const void* w) {
  // Measured on H200 (docs/PERFORMANCE.md): a clear win over cuBLAS at one row (decode), a loss
  // from two rows on (each weight chunk then meets n x-chunks from L1), so verify stays on cuBLAS
  // until this kernel stages x in shared memory.
  return n >= 1 && n <= kSkinnyUseRows && K % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

cudaError_t SkinnyGemm(const bf16* x, const bf16* w, void* out, bool out_f32, int64_t n, int64_t M, int64_t K,
                       cudaStream_t s) {
  SPECD_CHECK_ARG(x && w && out && M > 0 && K > 0 && SkinnyGemmApplies(n, K, x, w));
  if (out_f32) return Launch(x, w, static_cast<float*>(out), static_cast<int>(n), M, K, s);
  return Launch(x, w, static_cast<bf16*>(out), static_cast<int>(n), M, K, s);
}

}  // namespace specd::kernels
