// Partial RoPE, paged KV-cache append and causal GQA attention over each slot's cache.
#include <algorithm>

#include "common.cuh"
#include "specd/kernels.h"

namespace specd::kernels {
namespace {

// Rotate-half on dims [0, rot): (x_i, x_{i+rot/2}) -> (x_i c - x_{i+h} s, x_{i+h} c + x_i s),
// angle = pos * theta^(-2i/rot) in fp32, cos/sin rounded to bf16 as transformers does.
__global__ void RopeK(bf16* x, const int32_t* pos, int heads, int d, int rot, float theta) {
  const int64_t t = blockIdx.x;
  const int half = rot / 2;
  const float p = static_cast<float>(pos[t]);
  for (int j = threadIdx.x; j < heads * half; j += blockDim.x) {
    const int h = j / half, i = j % half;
    bf16* u = x + (t * heads + h) * d;
    float o1, o2;
    RopePair(ToF(u[i]), ToF(u[i + half]), p, i, rot, theta, &o1, &o2);
    u[i] = ToB(o1);
    u[i + half] = ToB(o2);
  }
}

// The offset of head 0's row `pos` of `slot` in the pool (head h adds h * block_size * d), or -1
// where the table gives that row no block.
// Positions are int32 on the device (as tok_pos is): a 32-bit division per key, not a 64-bit one.
__device__ __forceinline__ int64_t PagedRow(const PagedKv& kv, int hkv, int d, int32_t slot, int32_t pos) {
  if (slot < 0 || slot >= kv.num_slots || pos < 0) return -1;
  const int j = pos / kv.block_size;
  if (j >= kv.max_blocks) return -1;
  const int32_t blk = kv.table[int64_t{slot} * kv.max_blocks + j];
  if (blk < 0 || blk >= kv.num_blocks) return -1;
  return (int64_t{blk} * hkv * kv.block_size + (pos - j * kv.block_size)) * d;
}

__global__ void KvAppendK(const bf16* k, const bf16* v, const int32_t* tok_slot, const int32_t* tok_pos, int hkv,
                          int d, PagedKv kv) {
  const int64_t t = blockIdx.x;
  const int64_t row = PagedRow(kv, hkv, d, tok_slot[t], tok_pos[t]);
  if (row < 0) return;
  for (int j = threadIdx.x; j < hkv * d; j += blockDim.x) {
    const int h = j / d, i = j % d;
    const int64_t dst = row + int64_t{h} * kv.block_size * d + i;
    kv.k[dst] = k[t * hkv * d + j];
    kv.v[dst] = v[t * hkv * d + j];
  }
}

constexpr int kAttnWarps = 4;

// Split-K attention ("flash decoding"): grid (token x query head, split). Each block takes a
// contiguous share of its token's keys 0..pos; its 4 warps walk those keys in turn (each key's row
// found through the slot's block table: a block of 16 rows is 16 x 512 contiguous bytes per head
// at D = 256, so paging costs one cached table read per key, not coalescing), each lane
// holding PER = D/32 consecutive dims of q and of the running output, so a key row is one
// coalesced 16-byte-per-lane load and its score one warp reduction. Each warp keeps an online
// softmax (max m, sum l, output acc); the block merges its warps and writes (acc, m, l) for the
// combine kernel, which merges the splits. Work per block stays small whatever the context, and
// a decode step of a few heads still spreads over many SMs.
template <int PER>
__global__ void AttentionPartialK(const bf16* q, PagedKv kv, const int32_t* tok_slot, const int32_t* tok_pos, int hq,
                                  int hkv, float scale, int splits, float* part) {
  constexpr int D = PER * 32;
  __shared__ float sm_m[kAttnWarps], sm_l[kAttnWarps];
  __shared__ float sm_acc[kAttnWarps][D];
  const int64_t th = blockIdx.x;
  const int64_t t = th / hq;
  const int h = static_cast<int>(th % hq);
  const int kvh = h / (hq / hkv);
  const int lane = threadIdx.x, w = threadIdx.y;
  const int64_t n_keys = tok_pos[t] + 1;
  const int64_t chunk = (n_keys + splits - 1) / splits;
  const int64_t j0 = blockIdx.y * chunk, j1 = min(n_keys, j0 + chunk);
  const int32_t slot = tok_slot[t];
  // Head kvh's rows of every block start this far into the block.
  const bf16* K = kv.k + int64_t{kvh} * kv.block_size * D;
  const bf16* V = kv.v + int64_t{kvh} * kv.block_size * D;
  float qv[PER], acc[PER];
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    qv[i] = ToF(q[(t * hq + h) * D + lane * PER + i]) * scale;
    acc[i] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int64_t j = j0 + w; j < j1; j += kAttnWarps) {
    const int64_t row = PagedRow(kv, hkv, D, slot, static_cast<int32_t>(j));  // the same for the whole warp
    if (row < 0) continue;
    const bf16* kr = K + row + lane * PER;
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < PER; ++i) dot += qv[i] * ToF(kr[i]);
    const float sc = WarpSum(dot);
    const float m_new = fmaxf(m, sc);
    const float corr = __expf(m - m_new), p = __expf(sc - m_new);
    l = l * corr + p;
    const bf16* vr = V + row + lane * PER;
#pragma unroll
    for (int i = 0; i < PER; ++i) acc[i] = acc[i] * corr + p * ToF(vr[i]);
    m = m_new;
  }
  if (lane == 0) {
    sm_m[w] = m;
    sm_l[w] = l;
  }
#pragma unroll
  for (int i = 0; i < PER; ++i) sm_acc[w][lane * PER + i] = acc[i];
  __syncthreads();
  if (w != 0) return;
  float M = -INFINITY;
#pragma unroll
  for (int x = 0; x < kAttnWarps; ++x) M = fmaxf(M, sm_m[x]);
  float L = 0.f, o[PER];
#pragma unroll
  for (int i = 0; i < PER; ++i) o[i] = 0.f;
#pragma unroll
  for (int x = 0; x < kAttnWarps; ++x) {
    const float f = sm_m[x] == -INFINITY ? 0.f : __expf(sm_m[x] - M);
    L += f * sm_l[x];
#pragma unroll
    for (int i = 0; i < PER; ++i) o[i] += f * sm_acc[x][lane * PER + i];
  }
  float* dst = part + (th * splits + blockIdx.y) * (D + 2);
#pragma unroll
  for (int i = 0; i < PER; ++i) dst[lane * PER + i] = o[i];
  if (lane == 0) {
    dst[D] = M;
    dst[D + 1] = L;
  }
}

// out[t, h] = sum_s e^{m_s - M} acc_s / sum_s e^{m_s - M} l_s
__global__ void AttentionCombineK(const float* part, int splits, int D, bf16* out) {
  const int64_t th = blockIdx.x;
  const float* p = part + th * splits * (D + 2);
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, p[s * (D + 2) + D]);
  float L = 0.f;
  for (int s = 0; s < splits; ++s) {
    const float ms = p[s * (D + 2) + D];
    if (ms != -INFINITY) L += __expf(ms - M) * p[s * (D + 2) + D + 1];
  }
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    float o = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float ms = p[s * (D + 2) + D];
      if (ms != -INFINITY) o += __expf(ms - M) * p[s * (D + 2) + i];
    }
    out[th * D + i] = ToB(o / L);
  }
}

}  // namespace

cudaError_t Rope(bf16* x, const int32_t* pos, int64_t n, int heads, int d, int rot, float theta, cudaStream_t s) {
  SPECD_CHECK_ARG(x && pos && n >= 0 && heads > 0 && rot > 0 && rot % 2 == 0 && rot <= d && theta > 0.f);
  if (n == 0) return cudaSuccess;
  RopeK<<<static_cast<unsigned>(n), 128, 0, s>>>(x, pos, heads, d, rot, theta);
  return LaunchStatus();
}

// A pool and table the kernels can index; the table's entries and the positions are checked on
// the device (PagedRow), where the launcher cannot see them.
static bool ValidPaged(const PagedKv& kv) {
  return kv.k && kv.v && kv.table && kv.num_blocks > 0 && kv.num_slots > 0 && kv.max_blocks > 0 &&
         kv.block_size > 0;
}

cudaError_t KvAppend(const bf16* k, const bf16* v, const int32_t* tok_slot, const int32_t* tok_pos, int64_t n, int hkv,
                     int d, const PagedKv& kv, cudaStream_t s) {
  SPECD_CHECK_ARG(k && v && tok_slot && tok_pos && n >= 0 && hkv > 0 && d > 0 && ValidPaged(kv));
  if (n == 0) return cudaSuccess;
  KvAppendK<<<static_cast<unsigned>(n), 256, 0, s>>>(k, v, tok_slot, tok_pos, hkv, d, kv);
  return LaunchStatus();
}

cudaError_t Attention(const bf16* q, const PagedKv& kv, const int32_t* tok_slot, const int32_t* tok_pos, int64_t n,
                      int hq, int hkv, int d, float scale, float* scratch, int splits, bf16* out, cudaStream_t s) {
  SPECD_CHECK_ARG(q && tok_slot && tok_pos && out && scratch && n >= 0 && hq > 0 && hkv > 0 && ValidPaged(kv));
  SPECD_CHECK_ARG(hq % hkv == 0 && d > 0 && d % 32 == 0 && d <= 512 && splits > 0 && splits <= 64);
  if (n == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(n * hq), static_cast<unsigned>(splits)), block(32, kAttnWarps);
  switch (d / 32) {
#define SPECD_CALL(P)                                                                                              \
  case P:                                                                                                         \
    AttentionPartialK<P><<<grid, block, 0, s>>>(q, kv, tok_slot, tok_pos, hq, hkv, scale, splits, scratch);       \
    break;
    SPECD_CALL(1)
    SPECD_CALL(2)
    SPECD_CALL(4)
    SPECD_CALL(8)
    SPECD_CALL(16)
#undef SPECD_CALL
    default:
      return cudaErrorInvalidValue;
  }
  AttentionCombineK<<<static_cast<unsigned>(n * hq), 128, 0, s>>>(scratch, splits, d, out);
  return LaunchStatus();
}

int AttentionSplits(int64_t tokens, int heads, int64_t max_ctx) {
  // Enough blocks to cover the SMs a few times; never chunks under 64 keys. Decode, verify and
  // small batched steps (up to 64 tokens) split as one token would: a token's key partition, hence
  // its rounding, then does not depend on how many tokens share the call.
  const int64_t n_heads_tokens = (tokens <= 64 ? 1 : tokens) * heads;
  int64_t splits = (264 + n_heads_tokens - 1) / n_heads_tokens;
  splits = std::min<int64_t>(splits, (max_ctx + 63) / 64);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(64, splits)));
}

}  // namespace specd::kernels
