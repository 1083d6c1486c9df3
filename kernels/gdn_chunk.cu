// Chunked (WY / UT form) gated delta rule for prefill spans, fp32 on CUDA cores.
//
// The same math as cpu_ref::GdnChunked (engine/runtime/cpu_gdn.cpp), chunk 64. Within a chunk, with
// G_i = sum_{m <= i} g_m (cumulative log-decay from the chunk start):
//   Lm_ij = beta_i (k_i·k_j) e^{G_i - G_j}  (j < i),   Aqk_ij = (q_i·k_j) e^{G_i - G_j}  (j <= i)
//   (I + Lm) W = diag(beta e^G) K,   (I + Lm) U = diag(beta) V        (forward substitution)
//   v_new = U - W S,   o = e^G (Q S) + Aqk v_new,   S <- e^{G_last} S + (K e^{G_last - G})^T v_new
// Three kernels, as FLA splits it, so only the state recurrence is sequential:
//   ChunkPrep   (chunk, value head), all parallel: G, Lm, Aqk, W, U.
//   ChunkState  (value head, 32 state columns), sequential over chunks: v_new, o_inter = e^G Q S,
//               the state update. The state tile stays in shared memory for the whole span.
//   ChunkOut    (chunk, value head, 64 output columns), all parallel: o = o_inter + Aqk v_new.
// Rows past the span's end in its last chunk are zero-padded with beta = 0 and g = 0, so they write
// nothing and do not decay; ChunkPrep writes zeros there and nothing reads them back into o.
#include "common.cuh"
#include "specd/kernels.h"

namespace specd::kernels {
namespace {

constexpr int kC = kGdnChunk;  // 64
constexpr int kThreads = 256;
static_assert(kC == 64, "the thread layouts below assume 64-token chunks");

// Scratch offsets (floats) for a span of `nc` chunks, P = 64 nc padded rows, per value head h:
//   W [hv][P][DK], U [hv][P][dv] (v_new in place after ChunkState), O [hv][P][dv] (o_inter),
//   A [hv][nc][64][64] (Aqk), G [hv][P].
struct ChunkScratch {
  float *W, *U, *O, *A, *G;
};
ChunkScratch Carve(float* base, int64_t P, int hv, int dk, int dv) {
  ChunkScratch s;
  s.W = base;
  s.U = s.W + P * hv * dk;
  s.O = s.U + P * hv * dv;
  s.A = s.O + P * hv * dv;
  s.G = s.A + P * hv * kC;
  return s;
}

// 16-byte shared-memory load; every caller's offset is a multiple of 4 floats from a 16-byte
// aligned buffer (row strides and tile origins below are multiples of 4).
__device__ __forceinline__ float4 Ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float Dot4(float4 a, float4 b) { return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w; }

// Shared floats of ChunkPrep: K and Q rows [64][DK + 4], Lm [64][68] (rows 16-byte aligned for
// float4 loads; the +4 staggers rows over the banks), G, beta and raw g.
constexpr int kLS = kC + 4;
template <int DK>
constexpr int PrepSmemFloats() {
  return 2 * kC * (DK + 4) + kC * kLS + 3 * kC;
}

// grid (chunk, value head), 256 threads.
template <int DK>
__global__ void __launch_bounds__(kThreads)
    GdnChunkPrepK(const float* q, const float* k, const float* v, const float* g, const float* beta, int64_t t0,
                  int len, int hk, int hv, int dv, ChunkScratch sc) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  constexpr int KS = DK + 4, LS = kLS;
  float* Ks = smem;
  float* Qs = Ks + kC * KS;
  float* Lm = Qs + kC * KS;
  float* Gs = Lm + kC * LS;
  float* Bs = Gs + kC;
  float* Gr = Bs + kC;  // the chunk's raw g
  const int c = blockIdx.x, h = blockIdx.y, kh = h / (hv / hk), tid = threadIdx.x;
  const int nc = gridDim.x;
  const int64_t P = int64_t{nc} * kC;
  const int64_t c0 = int64_t{c} * kC;
  const int L = min(kC, len - c * kC);  // >= 1: the grid has exactly ceil(len / 64) chunks

  for (int idx = tid; idx < kC * DK; idx += kThreads) {
    const int r = idx / DK, a = idx % DK;
    float kv = 0.f, qv = 0.f;
    if (r < L) {
      const int64_t src = ((t0 + c0 + r) * hk + kh) * DK + a;
      kv = k[src];
      qv = q[src];
    }
    Ks[r * KS + a] = kv;
    Qs[r * KS + a] = qv;
  }
  if (tid < kC) {
    Gr[tid] = tid < L ? g[(t0 + c0 + tid) * hv + h] : 0.f;
    Bs[tid] = tid < L ? beta[(t0 + c0 + tid) * hv + h] : 0.f;
  }
  __syncthreads();
  if (tid < kC) {
    // Summed in the reference's order; padded rows add g = 0 and keep G of the last real row.
    float acc = 0.f;
    for (int m = 0; m <= tid; ++m) acc += Gr[m];
    Gs[tid] = acc;
    sc.G[int64_t{h} * P + c0 + tid] = acc;
  }
  __syncthreads();

  // k_i·k_j and q_i·k_j for a 4x4 tile of (i, j) per thread: rows i = ti + 16 p, columns
  // j = tj + 16 q. The interleave puts a quarter-warp's 8 j rows on distinct 16-byte bank groups
  // (row stride DK + 4), and the two i rows of a warp are broadcasts.
  {
    const int ti = tid / 16, tj = tid % 16;
    float kk[4][4] = {}, qk[4][4] = {};
#pragma unroll 2
    for (int a = 0; a < DK; a += 4) {
      float4 ki[4], qi[4], kj[4];
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        ki[p] = Ld4(&Ks[(ti + 16 * p) * KS + a]);
        qi[p] = Ld4(&Qs[(ti + 16 * p) * KS + a]);
        kj[p] = Ld4(&Ks[(tj + 16 * p) * KS + a]);
      }
#pragma unroll
      for (int p = 0; p < 4; ++p) {
#pragma unroll
        for (int qq = 0; qq < 4; ++qq) {
          kk[p][qq] += Dot4(ki[p], kj[qq]);
          qk[p][qq] += Dot4(qi[p], kj[qq]);
        }
      }
    }
    float* Aout = sc.A + (int64_t{h} * nc + c) * kC * kC;
#pragma unroll
    for (int p = 0; p < 4; ++p) {
#pragma unroll
      for (int qq = 0; qq < 4; ++qq) {
        const int i = ti + 16 * p, j = tj + 16 * qq;
        float lm = 0.f, aq = 0.f;
        if (j <= i && i < L) {
          // j <= i: G_i - G_j <= 0 for g <= 0, so the exponent cannot overflow.
          const float decay = __expf(Gs[i] - Gs[j]);
          if (j < i) lm = Bs[i] * kk[p][qq] * decay;
          aq = qk[p][qq] * decay;
        }
        Lm[i * LS + j] = lm;
        Aout[i * kC + j] = aq;  // zeros above the diagonal and in padded rows: ChunkOut relies on it
      }
    }
  }
  __syncthreads();

  // Forward substitution, one right-hand-side column per thread: columns [0, DK) are W's
  // (beta e^G k), [DK, DK + dv) U's (beta v). Fully unrolled so x[] stays in registers; Lm rows
  // are broadcast float4 loads.
  for (int col = tid; col < DK + dv; col += kThreads) {
    const bool is_w = col < DK;
    const int vc = col - DK;
    float x[kC];
#pragma unroll
    for (int i = 0; i < kC; ++i) {
      float rhs;
      if (is_w) {
        rhs = Bs[i] * __expf(Gs[i]) * Ks[i * KS + col];
      } else {
        rhs = i < L ? Bs[i] * v[((t0 + c0 + i) * hv + h) * dv + vc] : 0.f;
      }
      const float* lrow = &Lm[i * LS];
#pragma unroll
      for (int m = 0; m + 4 <= i; m += 4) {
        const float4 l = Ld4(lrow + m);
        rhs -= l.x * x[m];
        rhs -= l.y * x[m + 1];
        rhs -= l.z * x[m + 2];
        rhs -= l.w * x[m + 3];
      }
#pragma unroll
      for (int m = i & ~3; m < i; ++m) rhs -= lrow[m] * x[m];
      x[i] = rhs;
    }
    if (is_w) {
      float* Wd = sc.W + (int64_t{h} * P + c0) * DK + col;
#pragma unroll
      for (int i = 0; i < kC; ++i) Wd[int64_t{i} * DK] = x[i];
    } else {
      float* Ud = sc.U + (int64_t{h} * P + c0) * dv + vc;
#pragma unroll
      for (int i = 0; i < kC; ++i) Ud[int64_t{i} * dv] = x[i];
    }
  }
}

// ChunkState: 512 threads as (32, 16). Shared floats: S tile [DK][32]; W^T and Q^T [DK][RS]
// (RS = 68: float4-aligned rows, and only 4-way conflicts on the transposing stores); v_new
// [64][32]; G [64]. The K chunk (scaled by e^{G_last - G}) reuses the W^T buffer as [64][DK] once
// v_new is done.
constexpr int kRS = kC + 4;
constexpr int kSTy = 16, kSThreads = 32 * kSTy;
template <int DK>
constexpr int StateSmemFloats() {
  return DK * 32 + 2 * DK * kRS + kC * 32 + kC;
}

// grid (value head, ceil(dv / 32)), block (32, 16). Thread (tx, ty) owns state column col = 32
// blockIdx.y + tx; for v_new / o_inter it computes rows 4 ty .. 4 ty + 3, for the state update
// key rows (DK / 16) ty .. + DK / 16.
template <int DK>
__global__ void __launch_bounds__(kSThreads)
    GdnChunkStateK(const float* q, const float* k, int64_t t0, int len, int hk, int hv, int dv, float* state,
                   ChunkScratch sc) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  float* Ss = smem;               // [DK][32]
  float* Wt = Ss + DK * 32;       // [DK][kRS], later K [64][DK]
  float* Qt = Wt + DK * kRS;      // [DK][kRS]
  float* Vn = Qt + DK * kRS;      // [64][32]
  float* Gs = Vn + kC * 32;       // [64]
  constexpr int kSR = DK / kSTy;  // state rows per thread in the update
  constexpr int kVR = kC / kSTy;  // v_new rows per thread
  static_assert(kVR == 4, "one float4 of W^T / Q^T per thread and key row");
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 32 + tx;
  const int h = blockIdx.x, kh = h / (hv / hk), col = blockIdx.y * 32 + tx;
  const bool live = col < dv;
  const int nc = (len + kC - 1) / kC;
  const int64_t P = int64_t{nc} * kC;
  float* S = state + int64_t{h} * DK * dv;

  for (int a = ty; a < DK; a += kSTy) Ss[a * 32 + tx] = live ? S[int64_t{a} * dv + col] : 0.f;

  // The chunk's W, Q and K rows are loaded into registers one phase ahead of their use (W and Q
  // of chunk c + 1 during chunk c's state update, K during the v_new product), so the global
  // latency overlaps compute. A thread holds key column pa of rows pr + e * kStep (512 threads
  // cover kStep = 512 / DK whole rows per step).
  constexpr int kPre = kC * DK / kSThreads, kStep = kSThreads / DK;
  const int pr = tid / DK, pa = tid % DK;
  const int64_t qk_row = int64_t{hk} * DK;  // q/k row stride (tokens)
  float wpre[kPre], qpre[kPre], kpre[kPre];
  auto load_wq = [&](int cc) {
    const int Lc = min(kC, len - cc * kC);
    const float* wp = sc.W + (int64_t{h} * P + int64_t{cc} * kC + pr) * DK + pa;
    const float* qp = q + (t0 + int64_t{cc} * kC + pr) * qk_row + int64_t{kh} * DK + pa;
#pragma unroll
    for (int e = 0; e < kPre; ++e) {
      wpre[e] = wp[e * kStep * DK];
      qpre[e] = pr + e * kStep < Lc ? qp[e * kStep * qk_row] : 0.f;
    }
  };
  load_wq(0);

  const int r0 = ty * kVR;
  for (int c = 0; c < nc; ++c) {
    const int64_t c0 = int64_t{c} * kC;
    const int L = min(kC, len - c * kC);
    __syncthreads();  // the previous chunk's state update (reads of Wt/Vn, writes of Ss) is done
#pragma unroll
    for (int e = 0; e < kPre; ++e) {
      Wt[pa * kRS + pr + e * kStep] = wpre[e];
      Qt[pa * kRS + pr + e * kStep] = qpre[e];
    }
    if (tid < kC) Gs[tid] = sc.G[int64_t{h} * P + c0 + tid];
    {
      const float* kp = k + (t0 + c0 + pr) * qk_row + int64_t{kh} * DK + pa;
#pragma unroll
      for (int e = 0; e < kPre; ++e) kpre[e] = pr + e * kStep < L ? kp[e * kStep * qk_row] : 0.f;
    }
    float vn[kVR], oi[kVR];
    float* Ud = sc.U + (int64_t{h} * P + c0) * dv + col;
#pragma unroll
    for (int i = 0; i < kVR; ++i) {
      vn[i] = live ? Ud[int64_t{r0 + i} * dv] : 0.f;
      oi[i] = 0.f;
    }
    __syncthreads();
#pragma unroll 4
    for (int a = 0; a < DK; ++a) {
      const float s = Ss[a * 32 + tx];
      const float4 w = Ld4(&Wt[a * kRS + r0]);
      const float4 qv = Ld4(&Qt[a * kRS + r0]);
      vn[0] -= w.x * s;
      vn[1] -= w.y * s;
      vn[2] -= w.z * s;
      vn[3] -= w.w * s;
      oi[0] += qv.x * s;
      oi[1] += qv.y * s;
      oi[2] += qv.z * s;
      oi[3] += qv.w * s;
    }
    float* Od = sc.O + (int64_t{h} * P + c0) * dv + col;
#pragma unroll
    for (int i = 0; i < kVR; ++i) {
      const int r = r0 + i;
      Vn[r * 32 + tx] = vn[i];
      if (live) {
        Ud[int64_t{r} * dv] = vn[i];  // v_new replaces U in place: only this thread reads it
        Od[int64_t{r} * dv] = oi[i] * __expf(Gs[r]);
      }
    }
    __syncthreads();  // Wt / Qt reads done, Vn complete
    const float gl = Gs[L - 1];
    float* Kc = Wt;  // [64][DK]
#pragma unroll
    for (int e = 0; e < kPre; ++e) {
      const int r = pr + e * kStep;
      Kc[r * DK + pa] = kpre[e] * __expf(gl - Gs[r]);  // padded rows are already zero
    }
    if (c + 1 < nc) load_wq(c + 1);
    __syncthreads();
    const float egl = __expf(gl);
    const int a0 = ty * kSR;
    float acc[kSR];
#pragma unroll
    for (int j = 0; j < kSR; ++j) acc[j] = Ss[(a0 + j) * 32 + tx] * egl;
    for (int r = 0; r < L; ++r) {
      const float vr = Vn[r * 32 + tx];
      if constexpr (kSR % 4 == 0) {
#pragma unroll
        for (int j = 0; j < kSR; j += 4) {
          const float4 kv = Ld4(&Kc[r * DK + a0 + j]);
          acc[j] += kv.x * vr;
          acc[j + 1] += kv.y * vr;
          acc[j + 2] += kv.z * vr;
          acc[j + 3] += kv.w * vr;
        }
      } else {
#pragma unroll
        for (int j = 0; j < kSR; ++j) acc[j] += Kc[r * DK + a0 + j] * vr;
      }
    }
#pragma unroll
    for (int j = 0; j < kSR; ++j) Ss[(a0 + j) * 32 + tx] = acc[j];
  }
  __syncthreads();
  if (live) {
    for (int a = ty; a < DK; a += kSTy) S[int64_t{a} * dv + col] = Ss[a * 32 + tx];
  }
}

// grid (chunk, value head, ceil(dv / 64)), 256 threads: o[i, col] = o_inter[i, col] +
// sum_{j <= i} Aqk[i, j] v_new[j, col] for the chunk's real rows, written as bf16. Each thread
// a 4x4 tile: rows tr + 16 p, columns tc + 16 q; Aqk is zero above the diagonal and in padded
// rows (ChunkPrep), so the sum runs over whole rows without masks.
__global__ void __launch_bounds__(kThreads)
    GdnChunkOutK(int64_t t0, int len, int hv, int dv, ChunkScratch sc, bf16* o) {
  constexpr int kW = 64, kAS = kC + 1;  // odd stride: a warp's two rows of As fall on different banks
  __shared__ float As[kC * kAS];
  __shared__ float Vs[kC * kW];
  const int c = blockIdx.x, h = blockIdx.y, col0 = blockIdx.z * kW, tid = threadIdx.x;
  const int nc = gridDim.x;
  const int64_t P = int64_t{nc} * kC;
  const int64_t c0 = int64_t{c} * kC;
  const int L = min(kC, len - c * kC);
  const float* Ain = sc.A + (int64_t{h} * nc + c) * kC * kC;
  for (int idx = tid; idx < kC * kC; idx += kThreads) As[(idx / kC) * kAS + idx % kC] = Ain[idx];
  for (int idx = tid; idx < kC * kW; idx += kThreads) {
    const int r = idx / kW, cc = idx % kW;
    Vs[idx] = col0 + cc < dv ? sc.U[(int64_t{h} * P + c0 + r) * dv + col0 + cc] : 0.f;
  }
  __syncthreads();
  const int tr = tid / 16, tc = tid % 16;
  float acc[4][4] = {};
  const int jend = min(L, tr + 16 * 3 + 1);  // past the thread's last row, Aqk is zero
  for (int j = 0; j < jend; ++j) {
    float av[4], vv[4];
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      av[p] = As[(tr + 16 * p) * kAS + j];
      vv[p] = Vs[j * kW + tc + 16 * p];
    }
#pragma unroll
    for (int p = 0; p < 4; ++p) {
#pragma unroll
      for (int qq = 0; qq < 4; ++qq) acc[p][qq] += av[p] * vv[qq];
    }
  }
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const int i = tr + 16 * p;
    if (i >= L) continue;
#pragma unroll
    for (int qq = 0; qq < 4; ++qq) {
      const int col = col0 + tc + 16 * qq;
      if (col < dv) o[((t0 + c0 + i) * hv + h) * dv + col] = ToB(sc.O[(int64_t{h} * P + c0 + i) * dv + col] + acc[p][qq]);
    }
  }
}

template <int DK>
cudaError_t LaunchChunked(const float* q, const float* k, const float* v, const float* g, const float* beta,
                          int64_t t0, int len, int hk, int hv, int dv, float* state, const ChunkScratch& sc, bf16* o,
                          cudaStream_t s) {
  const unsigned nc = static_cast<unsigned>((len + kC - 1) / kC);
  const size_t prep_smem = sizeof(float) * PrepSmemFloats<DK>();
  const size_t state_smem = sizeof(float) * StateSmemFloats<DK>();
  // Above the default 48 KiB of dynamic shared memory for DK = 128 (85 KiB and 94 KiB); sm_90 allows 227 KiB.
  cudaError_t e = cudaFuncSetAttribute(GdnChunkPrepK<DK>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(prep_smem));
  if (e != cudaSuccess) return e;
  e = cudaFuncSetAttribute(GdnChunkStateK<DK>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(state_smem));
  if (e != cudaSuccess) return e;
  GdnChunkPrepK<DK><<<dim3(nc, static_cast<unsigned>(hv)), kThreads, prep_smem, s>>>(q, k, v, g, beta, t0, len, hk,
                                                                                      hv, dv, sc);
  GdnChunkStateK<DK><<<dim3(static_cast<unsigned>(hv), static_cast<unsigned>((dv + 31) / 32)), dim3(32, kSTy),
                       state_smem, s>>>(q, k, t0, len, hk, hv, dv, state, sc);
  GdnChunkOutK<<<dim3(nc, static_cast<unsigned>(hv), static_cast<unsigned>((dv + 63) / 64)), kThreads, 0, s>>>(
      t0, len, hv, dv, sc, o);
  return LaunchStatus();
}

}  // namespace

bool GdnChunkSupports(int hk, int hv, int dk, int dv) {
  const bool dk_ok = dk == 16 || dk == 32 || dk == 64 || dk == 128;
  return dk_ok && hk > 0 && hv > 0 && hv % hk == 0 && dv > 0 && dv <= 1024;
}

int64_t GdnChunkScratchFloats(int64_t len, int hv, int dk, int dv) {
  const int64_t P = (len + kC - 1) / kC * kC;
  return P * hv * (int64_t{dk} + 2 * int64_t{dv} + kC + 1);
}

cudaError_t GdnChunked(const float* q, const float* k, const float* v, const float* g, const float* beta,
                       int64_t t0, int64_t len, int hk, int hv, int dk, int dv, float* state, float* scratch, bf16* o,
                       cudaStream_t s) {
  SPECD_CHECK_ARG(q && k && v && g && beta && state && scratch && o && t0 >= 0 && len >= 0);
  SPECD_CHECK_ARG(GdnChunkSupports(hk, hv, dk, dv));
  // Chunk count in gridDim.x and 32-bit row indices inside the kernels.
  SPECD_CHECK_ARG(len <= (int64_t{1} << 24));
  if (len == 0) return cudaSuccess;
  const int64_t P = (len + kC - 1) / kC * kC;
  const ChunkScratch sc = Carve(scratch, P, hv, dk, dv);
  const int n = static_cast<int>(len);
  switch (dk) {
    case 16: return LaunchChunked<16>(q, k, v, g, beta, t0, n, hk, hv, dv, state, sc, o, s);
    case 32: return LaunchChunked<32>(q, k, v, g, beta, t0, n, hk, hv, dv, state, sc, o, s);
    case 64: return LaunchChunked<64>(q, k, v, g, beta, t0, n, hk, hv, dv, state, sc, o, s);
    case 128: return LaunchChunked<128>(q, k, v, g, beta, t0, n, hk, hv, dv, state, sc, o, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace specd::kernels
