// Qwen3.5 MoE block on the CPU: fp32 softmax router, top-k renormalised, SwiGLU experts, plus the
// sigmoid-gated shared expert.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "runtime/cpu_backend.h"
#include "runtime/cpu_gemm.h"

namespace specd {
namespace {

void Sgemm(const float* x, const float* w, float* y, int64_t n, int64_t m, int64_t k) { CpuSgemm(x, w, y, n, m, k); }

}  // namespace

void CpuBackend::MoeFfn(const Tensor& m, const MoeTensors& w, Tensor& out) {
  const int64_t N = m.dim(0), H = m.dim(1), E = w.router.dim(0);
  const int64_t Ie = w.down.dim(2), top_k = w.top_k;
  std::vector<float> logits(N * E);
  Sgemm(m.ptr<float>(), w.router.ptr<float>(), logits.data(), N, E, H);
  // Routing: softmax in fp32, top-k by probability (ties to the lower id), renormalised.
  std::vector<std::vector<std::pair<int64_t, float>>> per_expert(E);  // (token, weight)
  const std::vector<int32_t>* forced = NextForcedRouting();
  if (forced != nullptr && static_cast<int64_t>(forced->size()) != N * top_k) forced = nullptr;
  std::vector<int32_t> chosen;
  for (int64_t t = 0; t < N; ++t) {
    float* l = &logits[t * E];
    const float mx = *std::max_element(l, l + E);
    float sum = 0.f;
    for (int64_t e = 0; e < E; ++e) sum += (l[e] = std::exp(l[e] - mx));
    for (int64_t e = 0; e < E; ++e) l[e] /= sum;
    std::vector<int64_t> idx(E);
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + top_k, idx.end(),
                      [&](int64_t a, int64_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
    if (forced != nullptr) {
      for (int64_t j = 0; j < top_k; ++j) idx[j] = std::clamp<int64_t>((*forced)[t * top_k + j], 0, E - 1);
    }
    for (int64_t j = 0; j < top_k; ++j) chosen.push_back(static_cast<int32_t>(idx[j]));
    float tot = 0.f;
    for (int64_t j = 0; j < top_k; ++j) tot += l[idx[j]];
    for (int64_t j = 0; j < top_k; ++j) per_expert[idx[j]].push_back({t, l[idx[j]] / tot});
  }
  if (moe_record_ != nullptr) moe_record_->push_back(std::move(chosen));
  float* o = out.ptr<float>();
  std::fill(o, o + N * H, 0.f);
  // Experts in ascending id, each contribution scaled and added (the reference order).
  std::vector<float> xin, gu, act, y;
  for (int64_t e = 0; e < E; ++e) {
    const auto& toks = per_expert[e];
    if (toks.empty()) continue;
    const int64_t n = static_cast<int64_t>(toks.size());
    xin.resize(n * H);
    for (int64_t i = 0; i < n; ++i) {
      std::copy_n(m.ptr<float>() + toks[i].first * H, H, xin.begin() + i * H);
    }
    gu.resize(n * 2 * Ie);
    Sgemm(xin.data(), w.gate_up.ptr<float>() + e * 2 * Ie * H, gu.data(), n, 2 * Ie, H);
    act.resize(n * Ie);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < Ie; ++j) act[i * Ie + j] = cpu_ref::Silu(gu[i * 2 * Ie + j]) * gu[i * 2 * Ie + Ie + j];
    }
    y.resize(n * H);
    Sgemm(act.data(), w.down.ptr<float>() + e * H * Ie, y.data(), n, H, Ie);
    for (int64_t i = 0; i < n; ++i) {
      float* dst = o + toks[i].first * H;
      const float wt = toks[i].second;
      for (int64_t j = 0; j < H; ++j) dst[j] += wt * y[i * H + j];
    }
  }
  if (!w.shared_gate.defined()) return;
  const int64_t Is = w.shared_gate.dim(0);
  std::vector<float> sg(N * Is), su(N * Is), sd(N * H), gate(N);
  Sgemm(m.ptr<float>(), w.shared_gate.ptr<float>(), sg.data(), N, Is, H);
  Sgemm(m.ptr<float>(), w.shared_up.ptr<float>(), su.data(), N, Is, H);
  for (int64_t i = 0; i < N * Is; ++i) sg[i] = cpu_ref::Silu(sg[i]) * su[i];
  Sgemm(sg.data(), w.shared_down.ptr<float>(), sd.data(), N, H, Is);
  Sgemm(m.ptr<float>(), w.shared_router.ptr<float>(), gate.data(), N, 1, H);
  for (int64_t t = 0; t < N; ++t) {
    const float gt = cpu_ref::Sigmoid(gate[t]);
    for (int64_t j = 0; j < H; ++j) o[t * H + j] += gt * sd[t * H + j];
  }
}

}  // namespace specd
