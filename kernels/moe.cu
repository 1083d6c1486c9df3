// MoE routing (fp32 softmax, top-k, renormalised) and the accumulation of expert outputs.
#include "common.cuh"
#include "specd/kernels.h"

namespace specd::kernels {
namespace {

// One thread per token: E is small (<= 512), and the k largest are found by k passes.
__global__ void RouterTopKK(const float* logits, int64_t n, int E, int k, int32_t* ids, float* weights) {
  const int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (t >= n) return;
  const float* l = logits + t * E;
  float mx = -INFINITY;
  for (int e = 0; e < E; ++e) mx = fmaxf(mx, l[e]);
  float sum = 0.f;
  for (int e = 0; e < E; ++e) sum += __expf(l[e] - mx);
  float tot = 0.f;
  int prev = -1;
  float prev_p = INFINITY;
  for (int r = 0; r < k; ++r) {
    // The next largest probability strictly after (prev_p, prev) in (prob desc, id asc) order.
    int best = -1;
    float bp = -1.f;
    for (int e = 0; e < E; ++e) {
      const float p = __expf(l[e] - mx) / sum;
      const bool after = p < prev_p || (p == prev_p && e > prev);
      if (after && (p > bp)) {
        bp = p;
        best = e;
      }
    }
    ids[t * k + r] = best;
    weights[t * k + r] = bp;
    tot += bp;
    prev = best;
    prev_p = bp;
  }
  for (int r = 0; r < k; ++r) weights[t * k + r] /= tot;
}

__global__ void ScaledRowAddK(const bf16* y, const int32_t* rows, const float* w, int64_t h, float* acc) {
  const int64_t i = blockIdx.x;
  float* dst = acc + int64_t{rows[i]} * h;
  const float wi = w[i];
  for (int64_t j = threadIdx.x; j < h; j += blockDim.x) dst[j] += wi * ToF(y[i * h + j]);
}

__global__ void MoeFinishK(const float* acc, const bf16* shared, const bf16* gate_logit, int64_t h, bf16* out) {
  const int64_t t = blockIdx.x;
  const float gs = gate_logit != nullptr ? SigmoidF(ToF(gate_logit[t])) : 0.f;
  for (int64_t j = threadIdx.x; j < h; j += blockDim.x) {
    float v = acc[t * h + j];
    if (shared != nullptr) v += gs * ToF(shared[t * h + j]);
    out[t * h + j] = ToB(v);
  }
}

}  // namespace

cudaError_t RouterTopK(const float* logits, int64_t n, int experts, int k, int32_t* ids, float* weights,
                       cudaStream_t s) {
  SPECD_CHECK_ARG(logits && ids && weights && n >= 0 && experts > 0 && k > 0 && k <= experts);
  if (n == 0) return cudaSuccess;
  RouterTopKK<<<Blocks(n, 128), 128, 0, s>>>(logits, n, experts, k, ids, weights);
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

}  // namespace specd::kernels
