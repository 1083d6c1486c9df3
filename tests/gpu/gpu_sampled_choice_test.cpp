// Sampled token choice on the GPU (kernels/token_choice.cu) against the host rule
// (speculative/sampling.cpp ChooseRow, which the CPU backend's ChooseTokens runs):
// - the processed distribution: the same support, entry for entry, and values to fp32 rounding,
//   at the real vocabulary and small ones, with every filter and ties cut by the filters;
// - the draws: the same (token, accept) as the host on thousands of rows (both use the same
//   counter RNG, so only rounding at a CDF step could part them);
// - exactness as a sampler, from the GPU's draws alone: chi-square against the host's p for the
//   inverse-CDF draw, the coupled Gumbel draw and the full rejection rule (draft ~ q, the kept
//   draft or its residual replacement must be distributed as p).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "gpu_test_util.h"
#include "speculative/rng.h"
#include "speculative/sampling.h"

namespace specd::testing {
namespace {

constexpr int64_t kQwenVocab = 248320;

struct ChooseResult {
  std::vector<TokenChoice> choice;
  std::vector<float> probs;  // the logits buffer afterwards
};

ChooseResult ChooseOn(Backend& be, const std::vector<float>& logits, int64_t V, const std::vector<TokenRowSpec>& rows,
                      const std::vector<float>& q = {}) {
  const int64_t R = static_cast<int64_t>(rows.size());
  Tensor l = be.Upload(logits.data(), DType::kF32, {R, V}, DType::kF32);
  Tensor qt = q.empty() ? Tensor{} : be.Upload(q.data(), DType::kF32, {static_cast<int64_t>(q.size()) / V, V}, DType::kF32);
  Tensor out = be.Alloc(DType::kI32, {R, 2});
  be.ChooseTokens(l, rows, qt, out);
  const auto flat = be.DownloadI32(out);
  ChooseResult r;
  r.probs = be.DownloadF32(l);
  const Status st = be.TakeError();
  EXPECT_TRUE(st.ok()) << st.ToString();
  for (int64_t i = 0; i < R; ++i) r.choice.push_back(TokenChoice{flat[2 * i], flat[2 * i + 1]});
  return r;
}

TokenRowSpec Spec(float T, int top_k, float top_p, float min_p, uint64_t seed, int64_t pos) {
  TokenRowSpec s;
  s.temperature = T;
  s.top_k = top_k;
  s.top_p = top_p;
  s.min_p = min_p;
  s.seed = seed;
  s.position = pos;
  return s;
}

// The filter settings every distribution test walks through (one row each).
std::vector<TokenRowSpec> FilterGrid(uint64_t seed) {
  std::vector<TokenRowSpec> rows;
  const float temps[] = {0.6f, 1.f, 1.7f};
  const int ks[] = {0, 1, 7, 50, 2000};
  const float ps[] = {1.f, 0.95f, 0.5f, 0.05f};
  const float mps[] = {0.f, 0.02f, 0.3f};
  int i = 0;
  for (float T : temps) {
    for (int k : ks) {
      for (float p : ps) {
        const float mp = mps[(i++) % 3];
        rows.push_back(Spec(T, k, p, mp, seed + i, 100 + i));
      }
    }
  }
  return rows;
}

// The same support entry for entry, and p to fp32 rounding (the device holds e in fp32 before
// normalising; the host keeps it in fp64).
void ExpectSameDistribution(const std::vector<float>& got, const std::vector<float>& want, int64_t V,
                            const std::vector<TokenRowSpec>& rows, const std::string& what) {
  for (size_t r = 0; r < rows.size(); ++r) {
    int support_mismatch = 0, value_mismatch = 0, kept = 0;
    for (int64_t v = 0; v < V; ++v) {
      const float g = got[r * V + v], w = want[r * V + v];
      kept += w > 0.f;
      if ((g > 0.f) != (w > 0.f)) {
        ++support_mismatch;
      } else if (std::fabs(g - w) > 4e-7 * w + 1e-30) {
        ++value_mismatch;
      }
    }
    EXPECT_EQ(support_mismatch, 0) << what << " row " << r << " (T " << rows[r].temperature << " k " << rows[r].top_k
                                   << " p " << rows[r].top_p << " min_p " << rows[r].min_p << "), host keeps " << kept;
    EXPECT_EQ(value_mismatch, 0) << what << " row " << r;
  }
}

TEST(GpuSampledChoice, ProcessedDistributionEqualsHostAtEveryFilter) {
  SPECD_REQUIRE_GPU();
  auto cpu = MakeCpuBackend();
  for (int64_t V : {int64_t{1000}, int64_t{4099}, kQwenVocab}) {
    const auto rows = FilterGrid(static_cast<uint64_t>(V));
    const int64_t R = static_cast<int64_t>(rows.size());
    const auto x = RandomVec(static_cast<size_t>(R * V), static_cast<uint64_t>(V) + 7, 6.f);
    const auto want = ChooseOn(*cpu, x, V, rows);
    const auto got = ChooseOn(*Gpu(), x, V, rows);
    ExpectSameDistribution(got.probs, want.probs, V, rows, "V " + std::to_string(V));
  }
}

// Runs of equal logits where each filter cuts: the host keeps the lower ids of a run (a stable
// sort), and so must the device, including runs that straddle the device's chunks.
TEST(GpuSampledChoice, FiltersCutRunsOfEqualValuesAtTheLowerIds) {
  SPECD_REQUIRE_GPU();
  auto cpu = MakeCpuBackend();
  const int64_t V = kQwenVocab;
  std::vector<TokenRowSpec> rows;
  std::vector<float> x;
  auto add_row = [&](const TokenRowSpec& s, auto&& shape) {
    std::vector<float> row = RandomVec(static_cast<size_t>(V), 500 + rows.size(), 4.f);
    shape(row);
    x.insert(x.end(), row.begin(), row.end());
    rows.push_back(s);
  };
  // 40 ids spread over the row share the maximum: top-k 5 keeps the 5 lowest of them.
  auto run_of_max = [&](std::vector<float>& row) {
    for (int i = 0; i < 40; ++i) row[(i * 6151 + 11) % V] = 9.f;
  };
  add_row(Spec(1.f, 5, 1.f, 0.f, 1, 10), run_of_max);
  add_row(Spec(0.8f, 39, 1.f, 0.f, 2, 11), run_of_max);
  // top-p crossing inside a run of 200 equal second-best values.
  add_row(Spec(1.f, 0, 0.6f, 0.f, 3, 12), [&](std::vector<float>& row) {
    row[V / 2] = 12.f;
    for (int i = 0; i < 200; ++i) row[(i * 1237 + 5) % V] = 10.f;
  });
  // top-p crossing inside the second of two runs; min-p drops the tail below them.
  add_row(Spec(1.f, 0, 0.9f, 0.1f, 4, 13), [&](std::vector<float>& row) {
    for (int64_t v = 0; v < V; ++v) row[v] = -30.f;
    for (int i = 0; i < 30; ++i) row[(i * 8191 + 3) % V] = 2.f;
    for (int i = 0; i < 30; ++i) row[(i * 4093 + 17) % V] = 0.f;
  });
  // Every entry equal: top-k 1000 keeps ids 0..999.
  add_row(Spec(1.f, 1000, 1.f, 0.f, 5, 14), [&](std::vector<float>& row) {
    for (auto& v : row) v = 1.f;
  });
  const auto want = ChooseOn(*cpu, x, V, rows);
  const auto got = ChooseOn(*Gpu(), x, V, rows);
  ExpectSameDistribution(got.probs, want.probs, V, rows, "ties");
  // The rule itself, independently of the host code: the first row keeps exactly the 5 lowest
  // ids of the run, the last row ids 0..999.
  std::vector<int64_t> run;
  for (int i = 0; i < 40; ++i) run.push_back((i * 6151 + 11) % V);
  std::sort(run.begin(), run.end());
  for (int64_t v = 0; v < V; ++v) {
    const bool in5 = std::find(run.begin(), run.begin() + 5, v) != run.begin() + 5;
    EXPECT_EQ(got.probs[v] > 0.f, in5) << v;
    EXPECT_EQ(got.probs[4 * V + v] > 0.f, v < 1000) << v;
  }
}

// Rows of every kind in one call: plain draws (target and draft streams), coupled draws, greedy
// rows, and verify rows under greedy, coupled and rejection (one-hot and q) rules.
struct MixedRows {
  std::vector<TokenRowSpec> rows;
  std::vector<float> x, q;
};
MixedRows MakeMixed(int64_t V, int n, uint64_t seed) {
  MixedRows m;
  m.x = RandomVec(static_cast<size_t>(n) * V, seed, 5.f);
  const auto qlog = RandomVec(static_cast<size_t>(n) * V, seed + 1, 5.f);
  auto grid = FilterGrid(seed);
  for (int i = 0; i < n; ++i) {
    TokenRowSpec s = grid[static_cast<size_t>(i) % grid.size()];
    s.seed = seed * 1000 + i;
    s.position = 7 * i + 3;
    const int kind = i % 6;
    if (kind == 1) s.temperature = 0.f;
    if (kind == 2) s.coupled = true;
    if (kind == 3) {
      s.stream = static_cast<int32_t>(RngStream::kDraft);
      s.index = 1 + i % 5;
    }
    if (kind >= 4 || i % 7 == 0) {
      // A verify row whose draft is likely (the row's argmax) half of the time.
      s.draft = i % 2 ? ArgmaxF(m.x.data() + static_cast<int64_t>(i) * V, V) : static_cast<int32_t>((i * 7919) % V);
      s.index = 1 + i % 8;
      s.coupled = i % 7 == 0 && kind < 4;
    }
    if (kind == 5 && !s.greedy() && !s.coupled) {
      std::vector<float> qrow;
      ProcessedProbs(qlog.data() + static_cast<int64_t>(i) * V, V, ParamsOf(s), qrow);
      s.q_row = static_cast<int32_t>(m.q.size() / V);
      m.q.insert(m.q.end(), qrow.begin(), qrow.end());
    }
    m.rows.push_back(s);
  }
  return m;
}

TEST(GpuSampledChoice, DrawsAndAcceptsEqualTheHost) {
  SPECD_REQUIRE_GPU();
  auto cpu = MakeCpuBackend();
  for (int64_t V : {int64_t{257}, int64_t{4096}, kQwenVocab}) {
    const int n = V == kQwenVocab ? 120 : 3000;
    const MixedRows m = MakeMixed(V, n, static_cast<uint64_t>(V));
    const auto want = ChooseOn(*cpu, m.x, V, m.rows, m.q);
    const auto got = ChooseOn(*Gpu(), m.x, V, m.rows, m.q);
    int accepts = 0, rejects = 0;
    for (int i = 0; i < n; ++i) {
      EXPECT_EQ(got.choice[i].token, want.choice[i].token) << "V " << V << " row " << i;
      EXPECT_EQ(got.choice[i].accept, want.choice[i].accept) << "V " << V << " row " << i;
      if (m.rows[i].draft >= 0) {
        (want.choice[i].accept ? accepts : rejects) += 1;
      }
    }
    // Both outcomes of the verify rule occur, so the comparison covers both.
    EXPECT_GT(accepts, n / 50) << V;
    EXPECT_GT(rejects, n / 50) << V;
  }
}

// Chi-square of `counts` (n draws) against p over the bins with n p >= 5 (the rest pooled).
double ChiSquare(const std::vector<int>& counts, const std::vector<float>& p, int n, int* dof) {
  double chi = 0, rest_e = 0, rest_o = 0;
  *dof = -1;
  for (size_t v = 0; v < p.size(); ++v) {
    const double e = static_cast<double>(p[v]) * n;
    if (e >= 5) {
      chi += (counts[v] - e) * (counts[v] - e) / e;
      ++*dof;
    } else {
      rest_e += e;
      rest_o += counts[v];
    }
    if (p[v] == 0.f) {
      EXPECT_EQ(counts[v], 0) << "a token outside the support was drawn: " << v;
    }
  }
  if (rest_e >= 5) {
    chi += (rest_o - rest_e) * (rest_o - rest_e) / rest_e;
    ++*dof;
  }
  return chi;
}
// Far in the tail of chi-square(dof): mean dof, sd sqrt(2 dof); the draws are fixed by their
// seeds, so this is a deterministic check with a wide margin, not a flaky one.
double ChiLimit(int dof) { return dof + 7.0 * std::sqrt(2.0 * dof); }

TEST(GpuSampledChoice, DrawsAreDistributedAsTheProcessedDistribution) {
  SPECD_REQUIRE_GPU();
  const int64_t V = 64;
  const int n = 40000;
  const auto logits = RandomVec(static_cast<size_t>(V), 77, 2.5f);
  const auto qlog = RandomVec(static_cast<size_t>(V), 78, 2.5f);
  for (int mode = 0; mode < 4; ++mode) {  // 0 inverse CDF, 1 coupled, 2 rejection one-hot, 3 rejection with q
    TokenRowSpec base = Spec(1.1f, mode == 1 ? 30 : 0, mode == 0 ? 0.9f : 1.f, 0.f, 1234 + mode, 0);
    base.coupled = mode == 1;
    std::vector<float> p, q;
    ProcessedProbs(logits.data(), V, ParamsOf(base), p);
    ProcessedProbs(qlog.data(), V, ParamsOf(base), q);
    std::vector<TokenRowSpec> rows;
    std::vector<float> x, qs;
    for (int i = 0; i < n; ++i) {
      TokenRowSpec s = base;
      s.position = i;  // a fresh counter per row: independent draws
      if (mode >= 2) {
        // Mode 3: d ~ q and q given. Mode 2: a one-hot draft (q = 1 at d) keeps d with
        // probability p(d) and otherwise draws from p without d, which is p for any d; d is
        // drawn from p on another stream so that acceptances are frequent.
        const double u = CounterUniform(99, static_cast<uint64_t>(i), 0, RngStream::kDraft);
        s.draft = SampleFrom(mode == 3 ? q : p, u);
        s.index = 1;
        if (mode == 3) s.q_row = i;
      }
      rows.push_back(s);
      x.insert(x.end(), logits.begin(), logits.end());
      if (mode == 3) qs.insert(qs.end(), q.begin(), q.end());
    }
    const auto got = ChooseOn(*Gpu(), x, V, rows, qs);
    std::vector<int> counts(static_cast<size_t>(V), 0);
    int accepted = 0;
    for (int i = 0; i < n; ++i) {
      const TokenChoice& c = got.choice[i];
      const int32_t tok = mode >= 2 && c.accept ? rows[i].draft : c.token;
      ASSERT_GE(tok, 0);
      ASSERT_LT(tok, V);
      ++counts[tok];
      accepted += c.accept;
    }
    int dof = 0;
    const double chi = ChiSquare(counts, p, n, &dof);
    EXPECT_GT(dof, 10) << "mode " << mode;
    EXPECT_LT(chi, ChiLimit(dof)) << "mode " << mode << " dof " << dof;
    if (mode >= 2) {
      // The accept rate is sum_d P(d) min(1, p(d) / q(d)): sum p^2 for one-hot drafts drawn from
      // p, sum min(p, q) for drafts drawn from q.
      double a = 0;
      for (int64_t v = 0; v < V; ++v) a += mode == 2 ? static_cast<double>(p[v]) * p[v] : std::min(p[v], q[v]);
      EXPECT_NEAR(accepted, n * a, 6 * std::sqrt(n * a * (1 - a)) + 1) << "mode " << mode;
    }
  }
}

TEST(GpuSampledChoice, BadRowsAreReportedNotRun) {
  SPECD_REQUIRE_GPU();
  const int64_t V = 100;
  Tensor l = Gpu()->Alloc(DType::kF32, {2, V});
  Tensor out = Gpu()->Alloc(DType::kI32, {2, 2});
  std::vector<TokenRowSpec> rows(2, Spec(1.f, 0, 1.f, 0.f, 1, 1));
  rows[1].q_row = 0;  // no q given
  Gpu()->ChooseTokens(l, rows, Tensor{}, out);
  EXPECT_FALSE(Gpu()->TakeError().ok());
  rows[1].q_row = -1;
  rows[1].top_p = 0.f;
  Gpu()->ChooseTokens(l, rows, Tensor{}, out);
  EXPECT_FALSE(Gpu()->TakeError().ok());
  rows.pop_back();  // one spec for two rows
  Gpu()->ChooseTokens(l, rows, Tensor{}, out);
  EXPECT_FALSE(Gpu()->TakeError().ok());
  // Past 2^20 entries a row's fixed-point mass could overflow: refused.
  const int64_t big = (int64_t{1} << 20) + 1;
  Tensor lb = Gpu()->Alloc(DType::kF32, {1, big});
  Tensor ob = Gpu()->Alloc(DType::kI32, {1, 2});
  Gpu()->ChooseTokens(lb, {Spec(1.f, 0, 0.9f, 0.f, 1, 1)}, Tensor{}, ob);
  EXPECT_FALSE(Gpu()->TakeError().ok());
}

}  // namespace
}  // namespace specd::testing
