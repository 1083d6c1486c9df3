// Speculative sampling is exact in distribution (docs/DESIGN-NOTES.md, "Verification and randomness"), and seeded output is
// reproducible: coupled mode gives the plain-sampling output for every k, drafter and batch;
// rejection mode is independent of batch composition.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "runtime/backend.h"
#include "speculative/engine.h"
#include "test_util.h"

namespace specd::testing {
namespace {

struct Fx {
  std::unique_ptr<Backend> be = MakeCpuBackend();
  std::unique_ptr<Qwen35Model> target, near;
  Fx() {
    target = std::move(Qwen35Model::Load(ModelDir("dense"), be.get())).value();
    near = std::move(Qwen35Model::Load(ModelDir("draft_near"), be.get())).value();
  }
};
Fx& F() {
  static Fx f;
  return f;
}

constexpr int kTopK = 5;
constexpr float kTemp = 1.5f;

// Top-k softmax at temperature, written independently of the engine's ProcessedProbs.
std::map<int, double> TopKProbs(const std::vector<float>& logits) {
  std::vector<int> idx(logits.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + kTopK, idx.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  std::map<int, double> p;
  double z = 0;
  for (int i = 0; i < kTopK; ++i) z += std::exp((logits[idx[i]] - logits[idx[0]]) / kTemp);
  for (int i = 0; i < kTopK; ++i) p[idx[i]] = std::exp((logits[idx[i]] - logits[idx[0]]) / kTemp) / z;
  return p;
}

// Exact joint distribution of the first 3 generated tokens, by enumeration with fresh caches.
std::map<std::vector<int32_t>, double> ExactJoint(const std::vector<int32_t>& prompt) {
  std::map<std::vector<int32_t>, double> out;
  CacheOptions co;
  co.max_ctx = 64;
  auto logits_after = [&](const std::vector<int32_t>& seq) {
    auto cache = std::move(F().target->NewCache(co)).value();
    const int s = *cache->AllocSlot();
    return RunForward(*F().target, *cache, s, seq, false);
  };
  for (auto [a, pa] : TopKProbs(logits_after(prompt))) {
    auto s1 = prompt;
    s1.push_back(a);
    for (auto [b, pb] : TopKProbs(logits_after(s1))) {
      auto s2 = s1;
      s2.push_back(b);
      for (auto [c, pc] : TopKProbs(logits_after(s2))) out[{a, b, c}] = pa * pb * pc;
    }
  }
  return out;
}

struct SampleRun {
  std::map<std::vector<int32_t>, int> counts;
  int64_t drafted = 0, accepted = 0;
};

SampleRun Sample(const std::vector<int32_t>& prompt, const std::string& drafter, int k, int n, SamplingMode mode,
                 Qwen35Model* target = nullptr, float temperature = kTemp) {
  if (target == nullptr) target = F().target.get();
  EngineOptions o;
  o.max_seqs = 100;
  o.max_ctx = 64;
  o.default_k = k;
  std::unique_ptr<Drafter> d;
  if (drafter == "near") d = std::move(MakeDraftModelDrafter(F().near.get(), 512, 100, 64, 16)).value();
  if (drafter == "ngram") d = MakeNgramDrafter();
  auto e = std::move(SpeculativeEngine::Create(target, std::move(d), o)).value();
  SampleRun r;
  for (int base = 0; base < n; base += 100) {
    std::vector<int> ids;
    for (int i = base; i < std::min(n, base + 100); ++i) {
      GenerationRequest g;
      g.prompt = prompt;
      g.max_tokens = 3;
      g.ignore_eos = true;
      g.sampling.temperature = temperature;
      g.sampling.top_k = kTopK;
      g.sampling.seed = 1000 + static_cast<uint64_t>(i);
      g.sampling.mode = mode;
      ids.push_back(*e->Add(g));
    }
    while (e->HasWork()) EXPECT_TRUE(e->Step().ok());
    for (int id : ids) {
      r.counts[e->Generated(id)]++;
      r.drafted += e->Stats(id).draft_tokens;
      r.accepted += e->Stats(id).accepted_tokens;
      e->Release(id);
    }
  }
  return r;
}

// Pearson chi-square of counts against exact probabilities; cells with expectation < 5 pooled.
double ChiSquare(const SampleRun& r, const std::map<std::vector<int32_t>, double>& exact, int n, int* dof) {
  double chi = 0, pool_e = 0, pool_o = 0;
  int cells = 0;
  int64_t outside = 0;
  for (const auto& [seq, c] : r.counts) {
    if (!exact.count(seq)) outside += c;
  }
  EXPECT_EQ(outside, 0) << "a sampled sequence has zero probability under the target";
  for (const auto& [seq, p] : exact) {
    const double e = p * n;
    auto it = r.counts.find(seq);
    const double o = it == r.counts.end() ? 0 : it->second;
    if (e < 5) {
      pool_e += e;
      pool_o += o;
      continue;
    }
    chi += (o - e) * (o - e) / e;
    ++cells;
  }
  if (pool_e > 0) {
    chi += (pool_o - pool_e) * (pool_o - pool_e) / pool_e;
    ++cells;
  }
  *dof = cells - 1;
  return chi;
}

// Chi-square critical value at upper tail 1e-6 (Wilson–Hilferty, z = 4.753). With fixed seeds the
// test is deterministic; the bound says a correct sampler fails it with probability 1e-6.
double Critical(int dof) {
  const double z = 4.753, k = dof;
  return k * std::pow(1 - 2 / (9 * k) + z * std::sqrt(2 / (9 * k)), 3);
}

class SamplingExactness : public ::testing::TestWithParam<std::tuple<std::string, SamplingMode>> {};

TEST_P(SamplingExactness, ThreeTokenJointMatchesTheTarget) {
  const auto& [drafter, mode] = GetParam();
  auto prompt = LoadRefs("dense").Ids("prompt_ids");
  prompt.resize(8);
  const auto exact = ExactJoint(prompt);
  constexpr int kN = 3000;
  // Draft position 2 and 3 of each sample: max_tokens 3, the first from the prefill, then one
  // verify of [t0, d1] (k clamps to the tokens left), so every sample passes the verifier.
  const SampleRun r = Sample(prompt, drafter, 2, kN, mode);
  int dof = 0;
  const double chi = ChiSquare(r, exact, kN, &dof);
  std::printf("  %s/%s: chi2 = %.1f, dof = %d, critical(1e-6) = %.1f, drafts %lld accepted %lld\n", drafter.c_str(),
              mode == SamplingMode::kCoupled ? "coupled" : "rejection", chi, dof, Critical(dof),
              static_cast<long long>(r.drafted), static_cast<long long>(r.accepted));
  EXPECT_GT(dof, 10);
  EXPECT_LT(chi, Critical(dof));
  EXPECT_GT(r.drafted, kN / 2);
  EXPECT_GT(r.accepted, r.drafted / 10);  // the verifier really kept drafts
}

INSTANTIATE_TEST_SUITE_P(Modes, SamplingExactness,
                         ::testing::Values(std::make_tuple(std::string("near"), SamplingMode::kRejection),
                                           std::make_tuple(std::string("near"), SamplingMode::kCoupled)),
                         [](const auto& info) {
                           return std::get<0>(info.param) +
                                  (std::get<1>(info.param) == SamplingMode::kCoupled ? "_coupled" : "_rejection");
                         });

TEST(SamplingExactness, ChiSquareDetectsAWrongSampler) {
  // The same statistic, the same support (top-5 of the same target), a different distribution:
  // the target sampled at temperature 2 instead of 1.5. A verifier that resampled from p instead
  // of the residual, or mis-scaled q, biases the joint in this way; the test above must see it.
  auto prompt = LoadRefs("dense").Ids("prompt_ids");
  prompt.resize(8);
  const auto exact = ExactJoint(prompt);
  constexpr int kN = 3000;
  const SampleRun r = Sample(prompt, "none", 0, kN, SamplingMode::kRejection, F().target.get(), 2.0f);
  int dof = 0;
  const double chi = ChiSquare(r, exact, kN, &dof);
  std::printf("  wrong sampler: chi2 = %.1f, dof = %d, critical(1e-6) = %.1f\n", chi, dof, Critical(dof));
  EXPECT_GT(chi, Critical(dof));
}

std::vector<int32_t> RunOne(const std::string& drafter, int k, SamplingMode mode, int companions, uint64_t seed,
                            int64_t* drafted = nullptr) {
  EngineOptions o;
  o.max_seqs = 8;
  o.max_ctx = 256;
  o.default_k = k;
  std::unique_ptr<Drafter> d;
  if (drafter == "near") d = std::move(MakeDraftModelDrafter(F().near.get(), 512, 8, 256, 16)).value();
  if (drafter == "ngram") d = MakeNgramDrafter();
  auto e = std::move(SpeculativeEngine::Create(F().target.get(), std::move(d), o)).value();
  auto refs = LoadRefs("dense");
  auto lp = refs.Ids("long_prompt_ids");
  // Companions of different lengths and their own seeds, added before and after.
  for (int c = 0; c < companions; ++c) {
    GenerationRequest g;
    g.prompt.assign(lp.begin() + c * 7, lp.begin() + c * 7 + 3 + 11 * c);
    g.max_tokens = 10 + 5 * c;
    g.ignore_eos = true;
    g.sampling.temperature = 0.9f;
    g.sampling.seed = 77 + c;
    g.sampling.mode = mode;
    (void)*e->Add(g);
  }
  GenerationRequest g;
  // A phrase repeated five times: the n-gram drafter finds matches, so both drafters draft.
  const auto p = refs.Ids("prompt_ids");
  for (int rep = 0; rep < 5; ++rep) g.prompt.insert(g.prompt.end(), p.begin(), p.begin() + 9);
  g.max_tokens = 30;
  g.ignore_eos = true;
  g.sampling.temperature = 0.8f;
  g.sampling.top_p = 0.95f;
  g.sampling.seed = seed;
  g.sampling.mode = mode;
  const int id = *e->Add(g);
  while (e->HasWork()) EXPECT_TRUE(e->Step().ok());
  if (drafted) *drafted = e->Stats(id).draft_tokens;
  return e->Generated(id);
}

TEST(SeededOutput, CoupledModeEqualsPlainSamplingForEveryKDrafterAndBatch) {
  const auto plain = RunOne("none", 0, SamplingMode::kCoupled, 0, 4242);
  ASSERT_EQ(plain.size(), 30u);
  for (const std::string drafter : {"near", "ngram"}) {
    for (int k : {1, 2, 4, 8}) {
      for (int companions : {0, 3}) {
        int64_t drafted = 0;
        EXPECT_EQ(RunOne(drafter, k, SamplingMode::kCoupled, companions, 4242, &drafted), plain)
            << drafter << " k=" << k << " companions=" << companions;
        EXPECT_GT(drafted, 0) << drafter << " k=" << k << ": the comparison needs real drafts";
      }
    }
  }
  EXPECT_NE(RunOne("none", 0, SamplingMode::kCoupled, 0, 4243), plain);  // the seed matters
}

TEST(SeededOutput, RejectionModeIsIndependentOfBatchComposition) {
  for (int k : {2, 5}) {
    const auto alone = RunOne("near", k, SamplingMode::kRejection, 0, 99);
    EXPECT_EQ(RunOne("near", k, SamplingMode::kRejection, 2, 99), alone) << k;
    EXPECT_EQ(RunOne("near", k, SamplingMode::kRejection, 4, 99), alone) << k;
  }
}

// The reported failure (issue: "seeded rejection sampling depends on the batch"): the same
// seeded request alone and as 8 concurrent copies, k = 7, 126 tokens. Its cause, OpenBLAS taking
// another kernel from 4 rows on, is pinned by CpuSgemm.EachRowIsIndependentOfTheRowCount (which
// failed before the fix); this run seldom meets an accept test close enough to its threshold to
// flip (it passed here with the old GEMM too), so it guards the engine-level property only.
// The demo pair (a trained target and draft) as in the report: the fixtures' random models
// rarely put an accept test near its threshold.
TEST(SeededOutput, RejectionModeCopiesInOneBatchEqualTheRequestAlone) {
  auto be = MakeCpuBackend();
  const std::string demo = std::string(SPECD_SOURCE_DIR) + "/models/demo/";
  auto target = std::move(Qwen35Model::Load(demo + "target", be.get())).value();
  auto draft = std::move(Qwen35Model::Load(demo + "draft", be.get())).value();
  auto run = [&](int copies, uint64_t seed) {
    EngineOptions o;
    o.max_seqs = 8;
    o.max_ctx = 256;
    o.default_k = 7;
    const int64_t V = target->config().vocab_size;
    auto d = std::move(MakeDraftModelDrafter(draft.get(), V, 8, 256, 16)).value();
    auto e = std::move(SpeculativeEngine::Create(target.get(), std::move(d), o)).value();
    const std::vector<int32_t> p{300, 301, 302, 10, 45, 46};
    std::vector<int> ids;
    for (int c = 0; c < copies; ++c) {
      GenerationRequest g;
      g.prompt = p;
      g.max_tokens = 126;
      g.ignore_eos = true;
      g.sampling.temperature = 0.8f;
      g.sampling.seed = seed;
      g.sampling.mode = SamplingMode::kRejection;
      ids.push_back(*e->Add(g));
    }
    while (e->HasWork()) EXPECT_TRUE(e->Step().ok());
    std::vector<std::vector<int32_t>> out;
    for (int id : ids) out.push_back(e->Generated(id));
    return out;
  };
  for (uint64_t seed : {42, 43}) {
    const auto alone = run(1, seed)[0];
    ASSERT_EQ(alone.size(), 126u);
    const auto many = run(8, seed);
    for (int c = 0; c < 8; ++c) EXPECT_EQ(many[c], alone) << "seed " << seed << ": copy " << c << " of 8";
  }
}

}  // namespace
}  // namespace specd::testing
