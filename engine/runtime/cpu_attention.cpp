// Causal GQA attention over each slot's KV cache (fp32 softmax), the CPU reference.
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "runtime/cpu_backend.h"

namespace specd {

void CpuBackend::Attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttnDims& d,
                           AttnLayerState& st, const BatchInfo& b, Tensor& out) {
  const int hq = d.num_q_heads, hkv = d.num_kv_heads, D = d.head_dim;
  const int64_t max_ctx = st.k.dim(2);
  const int group = hq / hkv;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  for (const auto& s : b.seqs) {
    if (s.n_past + s.len > max_ctx) {
      throw std::out_of_range(fmt::format("attention: {} tokens exceed the slot capacity {}",
                                          s.n_past + s.len, max_ctx));
    }
    // Append this span's keys/values at positions n_past.. (for kLog spans past the slot's
    // committed length; the commit decides how many of them count).
    for (int64_t t = 0; t < s.len; ++t) {
      for (int h = 0; h < hkv; ++h) {
        const int64_t dst = ((int64_t{s.slot} * hkv + h) * max_ctx + s.n_past + t) * D;
        const int64_t src = ((s.offset + t) * hkv + h) * D;
        std::memcpy(st.k.ptr<float>() + dst, k.ptr<float>() + src, sizeof(float) * D);
        std::memcpy(st.v.ptr<float>() + dst, v.ptr<float>() + src, sizeof(float) * D);
      }
    }
#pragma omp parallel for collapse(2) if (s.len * hq * (s.n_past + s.len) * D > (1 << 20))
    for (int64_t t = 0; t < s.len; ++t) {
      for (int h = 0; h < hq; ++h) {
        const int kvh = h / group;
        const int64_t n_keys = s.n_past + t + 1;
        const float* qv = q.ptr<float>() + ((s.offset + t) * hq + h) * D;
        const float* kc = st.k.ptr<float>() + (int64_t{s.slot} * hkv + kvh) * max_ctx * D;
        const float* vc = st.v.ptr<float>() + (int64_t{s.slot} * hkv + kvh) * max_ctx * D;
        std::vector<float> p(static_cast<size_t>(n_keys));
        float mx = -INFINITY;
        for (int64_t j = 0; j < n_keys; ++j) {
          float acc = 0.f;
          for (int i = 0; i < D; ++i) acc += qv[i] * kc[j * D + i];
          p[j] = acc * scale;
          mx = std::max(mx, p[j]);
        }
        float sum = 0.f;
        for (int64_t j = 0; j < n_keys; ++j) {
          p[j] = std::exp(p[j] - mx);
          sum += p[j];
        }
        float* o = out.ptr<float>() + ((s.offset + t) * hq + h) * D;
        std::memset(o, 0, sizeof(float) * D);
        for (int64_t j = 0; j < n_keys; ++j) {
          const float w = p[j] / sum;
          for (int i = 0; i < D; ++i) o[i] += w * vc[j * D + i];
        }
      }
    }
  }
}

}  // namespace specd
