// The acceptance-controlled benchmark drafter: alpha = 1 drafts only the target's tokens, alpha = 0
// none of them, and in between each draft is an independent Bernoulli(alpha) trial, so greedy
// speculation keeps a truncated-geometric number of drafts per step. Greedy output stays the
// target's plain greedy output whatever alpha is.
#include <gtest/gtest.h>

#include <cmath>

#include "speculative/acceptance_drafter.h"
#include "speculative/engine.h"
#include "speculative/rng.h"
#include "test_util.h"

namespace specd::testing {
namespace {

std::unique_ptr<AcceptanceDrafter> Make(std::vector<std::vector<int32_t>> refs, double alpha, int64_t V,
                                        uint64_t seed = 3) {
  auto d = AcceptanceDrafter::Create(std::move(refs), {alpha, seed, V});
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  return std::move(d).value();
}

// Greedy verification against a known continuation, without a model: keep the leading drafts
// that equal the reference, then append the reference's next token (correction or bonus).
struct Sim {
  SpeculativeStats stats;
  int64_t trials = 0, successes = 0;  // drafts the verifier looked at, and kept
};

Sim Simulate(AcceptanceDrafter& d, const std::vector<std::vector<int32_t>>& refs, int prompt_len, int k) {
  Sim sim;
  const SamplingParams greedy;
  for (size_t r = 0; r < refs.size(); ++r) {
    const int id = static_cast<int>(r);
    EXPECT_TRUE(d.AddSequence(id).ok());
    const auto& ref = refs[r];
    std::vector<int32_t> ctx(ref.begin(), ref.begin() + prompt_len + 1);  // prompt + first token
    while (ctx.size() + k < ref.size()) {
      std::vector<DraftProposal> out;
      EXPECT_TRUE(d.Propose({DraftRequest{id, &ctx, k, &greedy}}, out).ok());
      const auto& t = out[0].tokens;
      EXPECT_EQ(static_cast<int>(t.size()), k);
      int a = 0;
      while (a < static_cast<int>(t.size()) && t[a] == ref[ctx.size() + a]) ++a;
      sim.stats.Record(static_cast<int>(t.size()), a);
      sim.successes += a;
      sim.trials += a + (a < static_cast<int>(t.size()) ? 1 : 0);
      const size_t n = ctx.size() + a + 1;
      ctx.assign(ref.begin(), ref.begin() + n);
    }
    d.RemoveSequence(id);
  }
  return sim;
}

std::vector<std::vector<int32_t>> RandomRefs(int n, int len, int64_t V) {
  std::vector<std::vector<int32_t>> refs;
  for (int r = 0; r < n; ++r) {
    std::vector<int32_t> ref(len);
    for (int i = 0; i < len; ++i) ref[i] = static_cast<int32_t>(SplitMix64(r * 1000003ull + i) % V);
    refs.push_back(std::move(ref));
  }
  return refs;
}

TEST(AcceptanceDrafter, AlphaOneDraftsOnlyTheReferenceAlphaZeroNever) {
  const auto refs = RandomRefs(3, 400, 50);
  auto one = Make(refs, 1.0, 50);
  const Sim s1 = Simulate(*one, refs, 10, 4);
  EXPECT_GT(s1.stats.draft_tokens, 0);
  EXPECT_EQ(s1.stats.accepted_tokens, s1.stats.draft_tokens);
  auto zero = Make(refs, 0.0, 50);
  const Sim s0 = Simulate(*zero, refs, 10, 4);
  EXPECT_GT(s0.stats.draft_tokens, 0);
  EXPECT_EQ(s0.stats.accepted_tokens, 0);  // a wrong draft is never the true token, even at V = 50
}

TEST(AcceptanceDrafter, AcceptanceIsBinomialInAlphaAndTokensPerStepGeometric) {
  const double alpha = 0.8;
  const int k = 4;
  const auto refs = RandomRefs(8, 6000, 248320);
  auto d = Make(refs, alpha, 248320);
  const Sim s = Simulate(*d, refs, 16, k);
  ASSERT_GT(s.trials, 30000);
  // Each looked-at draft is a Bernoulli(alpha) trial: the estimate stays within 5 standard
  // deviations (two-sided normal tail 6e-7) of alpha.
  const double n = static_cast<double>(s.trials);
  const double est = static_cast<double>(s.successes) / n;
  const double sd = std::sqrt(alpha * (1 - alpha) / n);
  EXPECT_NEAR(est, alpha, 5 * sd) << "trials " << s.trials;
  // Tokens per step: 1 + min(k, Geometric) with mean (1 - alpha^{k+1}) / (1 - alpha); its
  // variance is below (k+1)^2 / 4, so 5 standard deviations of the mean over the steps bound it.
  const double want = (1 - std::pow(alpha, k + 1)) / (1 - alpha);
  const double steps = static_cast<double>(s.stats.verify_steps);
  EXPECT_NEAR(s.stats.mean_acceptance_length(), want, 5 * (k + 1) / 2.0 / std::sqrt(steps));
  // Per position: P(draft i kept | it was drafted) = alpha^i.
  const auto pp = s.stats.per_position_acceptance();
  ASSERT_EQ(static_cast<int>(pp.size()), k);
  for (int i = 0; i < k; ++i) {
    const double p = std::pow(alpha, i + 1);
    EXPECT_NEAR(pp[i], p, 5 * std::sqrt(p * (1 - p) / steps)) << "position " << i;
  }
}

TEST(AcceptanceDrafter, DrawsAreAFunctionOfSeedPositionAndIndex) {
  const auto refs = RandomRefs(1, 300, 1000);
  auto a = Make(refs, 0.5, 1000, 9), b = Make(refs, 0.5, 1000, 9), c = Make(refs, 0.5, 1000, 10);
  const SamplingParams greedy;
  std::vector<int32_t> ctx(refs[0].begin(), refs[0].begin() + 40);
  ASSERT_TRUE(a->AddSequence(0).ok());
  ASSERT_TRUE(b->AddSequence(7).ok());  // another sequence id, same reference and position
  ASSERT_TRUE(c->AddSequence(0).ok());
  std::vector<DraftProposal> pa, pb, pc;
  ASSERT_TRUE(a->Propose({DraftRequest{0, &ctx, 16, &greedy}}, pa).ok());
  ASSERT_TRUE(b->Propose({DraftRequest{7, &ctx, 16, &greedy}}, pb).ok());
  ASSERT_TRUE(c->Propose({DraftRequest{0, &ctx, 16, &greedy}}, pc).ok());
  EXPECT_EQ(pa[0].tokens, pb[0].tokens);
  EXPECT_NE(pa[0].tokens, pc[0].tokens);  // 16 fair coins agree by chance with probability 2^-16
}

TEST(AcceptanceDrafter, ContextOffItsReferenceGetsNoDraftsAndIsCounted) {
  const auto refs = RandomRefs(1, 100, 64);
  auto d = Make(refs, 1.0, 64);
  const SamplingParams greedy;
  std::vector<int32_t> ctx(refs[0].begin(), refs[0].begin() + 20);
  ctx[5] = (ctx[5] + 1) % 64;
  ASSERT_TRUE(d->AddSequence(0).ok());
  std::vector<DraftProposal> out;
  ASSERT_TRUE(d->Propose({DraftRequest{0, &ctx, 4, &greedy}}, out).ok());
  EXPECT_TRUE(out[0].tokens.empty());
  EXPECT_EQ(d->diverged(), 1);
  // Near the end of the reference it proposes only what it knows.
  auto e = Make(refs, 1.0, 64);
  ASSERT_TRUE(e->AddSequence(0).ok());
  std::vector<int32_t> tail(refs[0].begin(), refs[0].begin() + 98);
  ASSERT_TRUE(e->Propose({DraftRequest{0, &tail, 4, &greedy}}, out).ok());
  EXPECT_EQ(out[0].tokens, std::vector<int32_t>(refs[0].begin() + 98, refs[0].end()));
  EXPECT_EQ(e->diverged(), 0);
}

TEST(AcceptanceDrafter, RejectsBadOptions) {
  const auto refs = RandomRefs(1, 10, 64);
  EXPECT_EQ(AcceptanceDrafter::Create(refs, {1.5, 1, 64}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(AcceptanceDrafter::Create(refs, {-0.1, 1, 64}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(AcceptanceDrafter::Create(refs, {0.5, 1, 32}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(AcceptanceDrafter::Create({}, {0.5, 1, 64}).status().code(), StatusCode::kInvalidArgument);
}

// ---- with the engine and the tiny fixture target ----

struct Target {
  std::unique_ptr<Backend> be = MakeCpuBackend();
  std::unique_ptr<Qwen35Model> m = std::move(Qwen35Model::Load(ModelDir("dense"), be.get())).value();
};
Target& T() {
  static Target t;
  return t;
}

std::vector<int32_t> PlainGreedy(const std::vector<int32_t>& prompt, int n) {
  CacheOptions co;
  co.max_ctx = 512;
  auto cache = std::move(T().m->NewCache(co)).value();
  const int slot = *cache->AllocSlot();
  auto logits = RunForward(*T().m, *cache, slot, prompt, false);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(Argmax(logits.data(), 512));
    logits = RunForward(*T().m, *cache, slot, {out.back()}, false);
  }
  return out;
}

struct EngineRun {
  std::vector<std::vector<int32_t>> outputs;
  SpeculativeStats stats;
  int64_t trials = 0;
  double alpha = 0;
  int diverged = 0;
};

// Greedy speculation with the acceptance drafter over `prompts`, references = prompt + `refs`.
EngineRun RunEngine(const std::vector<std::vector<int32_t>>& prompts, const std::vector<std::vector<int32_t>>& conts,
                    double alpha, int k) {
  std::vector<std::vector<int32_t>> full;
  for (size_t i = 0; i < prompts.size(); ++i) {
    full.push_back(prompts[i]);
    full.back().insert(full.back().end(), conts[i].begin(), conts[i].end());
  }
  auto d = Make(full, alpha, T().m->config().vocab_size, 11);
  AcceptanceDrafter* dp = d.get();
  EngineOptions o;
  o.max_seqs = static_cast<int>(prompts.size());
  o.max_ctx = 512;
  o.default_k = k;
  auto e = std::move(SpeculativeEngine::Create(T().m.get(), std::move(d), o)).value();
  std::vector<int> ids;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerationRequest r;
    r.prompt = prompts[i];
    r.max_tokens = static_cast<int>(conts[i].size());
    r.ignore_eos = true;
    ids.push_back(*e->Add(r));
  }
  while (e->HasWork()) {
    auto st = e->Step();
    EXPECT_TRUE(st.ok()) << st.ToString();
    if (!st.ok()) break;
  }
  EngineRun run;
  for (int id : ids) {
    run.outputs.push_back(e->Generated(id));
    run.stats.Merge(e->Stats(id));
  }
  run.diverged = dp->diverged();
  run.trials = dp->looked_at();
  run.alpha = dp->measured_alpha();
  return run;
}

TEST(AcceptanceDrafterEngine, GreedyOutputEqualsPlainGreedyAtAlphaOneAndZero) {
  auto refs = LoadRefs("dense");
  auto p = refs.Ids("prompt_ids"), lp = refs.Ids("long_prompt_ids");
  const std::vector<std::vector<int32_t>> prompts = {p, {lp.begin(), lp.begin() + 31}, {p[2], p[4]}};
  std::vector<std::vector<int32_t>> conts;
  for (const auto& pr : prompts) conts.push_back(PlainGreedy(pr, 40));
  for (int k : {1, 4, 8}) {
    const EngineRun one = RunEngine(prompts, conts, 1.0, k);
    EXPECT_EQ(one.outputs, conts) << "k " << k;
    EXPECT_GT(one.stats.draft_tokens, 0);
    EXPECT_EQ(one.stats.accepted_tokens, one.stats.draft_tokens) << "k " << k;
    EXPECT_EQ(one.diverged, 0);
    const EngineRun zero = RunEngine(prompts, conts, 0.0, k);
    EXPECT_EQ(zero.outputs, conts) << "k " << k;
    EXPECT_GT(zero.stats.draft_tokens, 0);
    EXPECT_EQ(zero.stats.accepted_tokens, 0) << "k " << k;
    EXPECT_EQ(zero.diverged, 0);
  }
}

TEST(AcceptanceDrafterEngine, MeasuredAcceptanceAtAlphaPointEightIsWithinItsBinomialBound) {
  const double alpha = 0.8;
  auto refs = LoadRefs("dense");
  auto p = refs.Ids("prompt_ids"), lp = refs.Ids("long_prompt_ids");
  std::vector<std::vector<int32_t>> prompts, conts;
  for (int i = 0; i < 8; ++i) prompts.push_back({lp.begin() + i, lp.begin() + i + 9 + 5 * i});
  for (const auto& pr : prompts) conts.push_back(PlainGreedy(pr, 200));
  const EngineRun run = RunEngine(prompts, conts, alpha, 4);
  EXPECT_EQ(run.outputs, conts);
  EXPECT_EQ(run.diverged, 0);
  ASSERT_GT(run.trials, 1000);
  // Every looked-at draft is a Bernoulli(alpha) trial: 5 standard deviations (tail 6e-7).
  EXPECT_NEAR(run.alpha, alpha, 5 * std::sqrt(alpha * (1 - alpha) / static_cast<double>(run.trials)))
      << run.trials << " trials";
  const double want = (1 - std::pow(alpha, 5)) / (1 - alpha);
  EXPECT_NEAR(run.stats.mean_acceptance_length(), want,
              5 * 2.5 / std::sqrt(static_cast<double>(run.stats.verify_steps)));
}

}  // namespace
}  // namespace specd::testing
