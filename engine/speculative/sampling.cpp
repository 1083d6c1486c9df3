#include "speculative/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "speculative/rng.h"

namespace specd {

Status ValidateSampling(const SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0.f) {
    return InvalidArgument("temperature must be a finite value >= 0 (got {})", p.temperature);
  }
  if (p.top_k < 0) return InvalidArgument("top_k must be >= 0 (got {})", p.top_k);
  if (!(p.top_p > 0.f && p.top_p <= 1.f)) return InvalidArgument("top_p must be in (0, 1] (got {})", p.top_p);
  if (!(p.min_p >= 0.f && p.min_p <= 1.f)) return InvalidArgument("min_p must be in [0, 1] (got {})", p.min_p);
  return Status::Ok();
}

int ArgmaxF(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (x[i] > x[best]) best = i;
  }
  return static_cast<int>(best);
}

void ProcessedProbs(const float* logits, int64_t V, const SamplingParams& sp, std::vector<float>& out) {
  out.assign(static_cast<size_t>(V), 0.f);
  if (sp.greedy()) {
    out[ArgmaxF(logits, V)] = 1.f;
    return;
  }
  const float mx = *std::max_element(logits, logits + V);
  std::vector<double> e(static_cast<size_t>(V));
  double sum = 0;
  for (int64_t i = 0; i < V; ++i) {
    e[i] = logits[i] == -INFINITY ? 0.0 : std::exp((static_cast<double>(logits[i]) - mx) / sp.temperature);
    sum += e[i];
  }
  for (auto& x : e) x /= sum;
  const bool filter = (sp.top_k > 0 && sp.top_k < V) || sp.top_p < 1.f || sp.min_p > 0.f;
  std::vector<char> keep(static_cast<size_t>(V), 1);
  if (filter) {
    std::vector<int32_t> order(static_cast<size_t>(V));
    std::iota(order.begin(), order.end(), 0);
    // Descending probability, ties to the lower id, so the mask is deterministic.
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return e[a] > e[b]; });
    std::fill(keep.begin(), keep.end(), 0);
    const int64_t kmax = sp.top_k > 0 ? std::min<int64_t>(sp.top_k, V) : V;
    const double pmin = sp.min_p * e[order[0]];
    double cum = 0;
    for (int64_t r = 0; r < kmax; ++r) {
      const int32_t id = order[r];
      if (r > 0 && (cum >= sp.top_p || e[id] < pmin)) break;  // top-p keeps the token crossing p
      keep[id] = 1;
      cum += e[id];
    }
  }
  double tot = 0;
  for (int64_t i = 0; i < V; ++i) tot += keep[i] ? e[i] : 0.0;
  for (int64_t i = 0; i < V; ++i) out[i] = keep[i] ? static_cast<float>(e[i] / tot) : 0.f;
}

int SampleFrom(const std::vector<float>& p, double u) {
  double total = 0;
  for (float x : p) total += x;
  double target = u * total, cum = 0;
  int last = -1;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] <= 0.f) continue;
    last = static_cast<int>(i);
    cum += p[i];
    if (target < cum) return last;
  }
  return last < 0 ? 0 : last;  // rounding at the top end
}

int GumbelArgmax(const std::vector<float>& p, uint64_t seed, int64_t position) {
  int best = -1;
  double best_v = -INFINITY;
  for (size_t v = 0; v < p.size(); ++v) {
    if (p[v] <= 0.f) continue;
    double u = CounterUniform(seed, static_cast<uint64_t>(position), v, RngStream::kGumbel);
    u = std::max(u, 1e-300);
    const double score = std::log(static_cast<double>(p[v])) - std::log(-std::log(u));
    if (score > best_v) {
      best_v = score;
      best = static_cast<int>(v);
    }
  }
  return best < 0 ? 0 : best;
}

int SampleToken(const std::vector<float>& p, const SamplingParams& sp, int64_t position) {
  if (sp.greedy()) return static_cast<int>(std::max_element(p.begin(), p.end()) - p.begin());
  if (sp.mode == SamplingMode::kCoupled) return GumbelArgmax(p, sp.seed, position);
  return SampleFrom(p, CounterUniform(sp.seed, static_cast<uint64_t>(position), 0, RngStream::kSample));
}

bool AcceptDraft(const std::vector<float>& p, const float* q, int32_t d, uint64_t seed, int64_t position,
                 int index) {
  const double pd = p[static_cast<size_t>(d)];
  const double qd = q == nullptr ? 1.0 : q[d];
  const double u =
      CounterUniform(seed, static_cast<uint64_t>(position), static_cast<uint64_t>(index), RngStream::kAccept);
  return qd > 0 && u < std::min(1.0, pd / qd);
}

int ResidualDraw(const std::vector<float>& p, const float* q, int32_t d, uint64_t seed, int64_t position,
                 int index) {
  std::vector<float> res(p.size());
  double mass = 0;
  for (size_t v = 0; v < p.size(); ++v) {
    const double qv = q == nullptr ? (static_cast<int32_t>(v) == d ? 1.0 : 0.0) : q[v];
    res[v] = static_cast<float>(std::max(0.0, static_cast<double>(p[v]) - qv));
    mass += res[v];
  }
  const double u =
      CounterUniform(seed, static_cast<uint64_t>(position), static_cast<uint64_t>(index), RngStream::kResidual);
  return SampleFrom(mass > 0 ? res : p, u);  // p == q: any draw from p is exact
}

SamplingParams ParamsOf(const TokenRowSpec& s) {
  SamplingParams sp;
  sp.temperature = s.temperature;
  sp.top_k = s.top_k;
  sp.top_p = s.top_p;
  sp.min_p = s.min_p;
  sp.seed = s.seed;
  sp.mode = s.coupled ? SamplingMode::kCoupled : SamplingMode::kRejection;
  return sp;
}

TokenRowSpec RowSpecOf(const SamplingParams& sp, int64_t position) {
  TokenRowSpec t;
  t.temperature = sp.temperature;
  t.top_k = sp.top_k;
  t.top_p = sp.top_p;
  t.min_p = sp.min_p;
  t.seed = sp.seed;
  t.coupled = sp.mode == SamplingMode::kCoupled;
  t.position = position;
  t.index = 0;
  t.stream = static_cast<int32_t>(RngStream::kSample);
  return t;
}

TokenChoice ChooseRow(float* logits, int64_t V, const TokenRowSpec& s, const float* q) {
  TokenChoice c;
  if (s.greedy()) {
    c.token = ArgmaxF(logits, V);
    c.accept = s.draft >= 0 && c.token == s.draft;
    return c;
  }
  const SamplingParams sp = ParamsOf(s);
  std::vector<float> p;
  ProcessedProbs(logits, V, sp, p);
  std::copy(p.begin(), p.end(), logits);
  if (s.draft >= 0 && !s.coupled) {
    c.accept = AcceptDraft(p, s.q_row >= 0 ? q : nullptr, s.draft, s.seed, s.position, s.index);
    c.token = ResidualDraw(p, s.q_row >= 0 ? q : nullptr, s.draft, s.seed, s.position, s.index);
    return c;
  }
  c.token = s.coupled ? GumbelArgmax(p, s.seed, s.position)
                      : SampleFrom(p, CounterUniform(s.seed, static_cast<uint64_t>(s.position),
                                                     static_cast<uint64_t>(s.index), static_cast<RngStream>(s.stream)));
  c.accept = s.draft >= 0 && c.token == s.draft;
  return c;
}

}  // namespace specd
