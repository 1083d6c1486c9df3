// The token-choice ops (Backend::ArgmaxRows, MaskIds) equal the host path's rules, greedy
// verification from ids equals Verify(), and the engine's device token choice gives the host
// path's tokens while copying no logits for greedy sequences.
#include <gtest/gtest.h>

#include <cmath>

#include "engine_run.h"
#include "runtime/backend.h"
#include "speculative/engine.h"
#include "speculative/verifier.h"
#include "test_util.h"
#include "token_choice_cases.h"

namespace specd::testing {
namespace {

TEST(TokenChoiceOps, ArgmaxRowsEqualsHostArgmaxOnHardRows) {
  auto be = MakeCpuBackend();
  for (int64_t V : {1, 2, 7, 512, 4099, 10000}) {
    const int64_t R = 24;  // two of each hard case
    const auto x = HardLogits(R, V, static_cast<uint64_t>(V));
    Tensor l = be->Upload(x.data(), DType::kF32, {R, V}, DType::kF32);
    Tensor ids = be->Alloc(DType::kI32, {R});
    be->ArgmaxRows(l, ids);
    const auto got = be->DownloadI32(ids);
    ASSERT_EQ(got.size(), static_cast<size_t>(R));
    for (int64_t r = 0; r < R; ++r) {
      EXPECT_EQ(got[r], ArgmaxF(x.data() + r * V, V)) << "V " << V << " row " << r;
      EXPECT_EQ(got[r], ExpectedArgmax(x.data() + r * V, V)) << "V " << V << " row " << r;
    }
  }
}

TEST(TokenChoiceOps, HardRowsHoldTheCasesTheyClaim) {
  // Guards the case generator: a tie row, the -0/+0 row and the denormal row must each have a
  // unique answer that a sloppy argmax (highest id, flush-to-zero, NaN-as-max) would miss.
  const int64_t V = 4099;
  const auto x = HardLogits(12, V, 3);
  EXPECT_EQ(ExpectedArgmax(x.data() + 1 * V, V), V / 3 + 1);
  EXPECT_EQ(ExpectedArgmax(x.data() + 3 * V, V), 0);
  EXPECT_EQ(ExpectedArgmax(x.data() + 7 * V, V), V / 4 + 3);
  EXPECT_EQ(ExpectedArgmax(x.data() + 8 * V, V), V - 3);
  EXPECT_EQ(ExpectedArgmax(x.data() + 9 * V, V), V / 5 + 2);
}

TEST(TokenChoiceOps, MaskIdsSetsExactlyTheBannedIdsToMinusInfinity) {
  auto be = MakeCpuBackend();
  const int64_t R = 5, V = 300, M = 3;
  const auto x = RandomVec(static_cast<size_t>(R * V), 11, 4.f);
  // -1 pads; 300 and -7 are out of range and must be skipped; row 3 bans an id twice.
  const std::vector<int32_t> ban = {2, 299, -1, -1, -1, -1, 0, 300, -7, 5, 5, 6, 17, -1, -1};
  Tensor l = be->Upload(x.data(), DType::kF32, {R, V}, DType::kF32);
  Tensor b = be->Upload(ban.data(), DType::kI32, {R, M}, DType::kI32);
  be->MaskIds(l, b);
  const auto got = be->DownloadF32(l);
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t v = 0; v < V; ++v) {
      bool banned = false;
      for (int64_t j = 0; j < M; ++j) banned |= ban[r * M + j] == v;
      if (banned) {
        EXPECT_EQ(got[r * V + v], -INFINITY) << r << " " << v;
      } else {
        EXPECT_EQ(got[r * V + v], x[r * V + v]) << r << " " << v;
      }
    }
  }
}

// ChooseTokens over a verify span + VerifyFromChoices must be Verify() on the same rows, for
// every mode: greedy, coupled, rejection against one-hot drafts and against a draft
// distribution q. Drafts agree with a likely token for a trial-dependent prefix so all outcomes
// (early rejection, acceptance of all, bonus) occur.
TEST(TokenChoiceOps, ChooseTokensThenVerifyFromChoicesEqualsVerify) {
  const int64_t V = 64;
  auto be = MakeCpuBackend();
  int rejected_early = 0, all_accepted = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int k = trial % 9;
    SamplingParams sp;
    const int mode = trial % 4;  // 0 greedy, 1 coupled, 2 rejection one-hot, 3 rejection with q
    if (mode > 0) {
      sp.temperature = 0.7f + 0.1f * static_cast<float>(trial % 5);
      sp.top_k = trial % 3 == 0 ? 12 : 0;
      sp.top_p = trial % 5 == 0 ? 0.8f : 1.f;
      sp.seed = 1000 + trial;
      sp.mode = mode == 1 ? SamplingMode::kCoupled : SamplingMode::kRejection;
    }
    const auto x = RandomVec(static_cast<size_t>((k + 1) * V), 100 + trial, 3.f);
    const auto xq = RandomVec(static_cast<size_t>(k * V), 900 + trial, 3.f);
    std::vector<std::vector<float>> P(static_cast<size_t>(k + 1)), Q;
    for (int j = 0; j <= k; ++j) ProcessedProbs(x.data() + j * V, V, sp, P[j]);
    if (mode == 3) {
      Q.resize(static_cast<size_t>(k));
      for (int j = 0; j < k; ++j) ProcessedProbs(xq.data() + j * V, V, sp, Q[j]);
    }
    std::vector<int32_t> d(static_cast<size_t>(k));
    const int agree = trial % (k + 1);
    for (int j = 0; j < k; ++j) {
      const int32_t top = ArgmaxF(x.data() + j * V, V);
      d[j] = j < agree ? top : static_cast<int32_t>((top + 1 + trial % (V - 1)) % V);
    }
    const int64_t pos = 10 + trial;
    VerifyInput vi{&P, &d, mode == 3 ? &Q : nullptr, &sp, pos};
    const VerifyResult want = Verify(vi);

    std::vector<TokenRowSpec> rows(static_cast<size_t>(k + 1));
    for (int j = 0; j <= k; ++j) {
      TokenRowSpec& t = rows[j];
      t.temperature = sp.temperature;
      t.top_k = sp.top_k;
      t.top_p = sp.top_p;
      t.seed = sp.seed;
      t.coupled = sp.mode == SamplingMode::kCoupled;
      t.position = pos + j;
      if (j < k) {
        t.draft = d[j];
        t.index = j + 1;
        if (mode == 3) t.q_row = j;
      }
    }
    Tensor l = be->Upload(x.data(), DType::kF32, {k + 1, V}, DType::kF32);
    std::vector<float> qflat;
    for (const auto& q : Q) qflat.insert(qflat.end(), q.begin(), q.end());
    Tensor q = mode == 3 && k > 0 ? be->Upload(qflat.data(), DType::kF32, {k, V}, DType::kF32) : Tensor{};
    Tensor out = be->Alloc(DType::kI32, {k + 1, 2});
    be->ChooseTokens(l, rows, q, out);
    const auto flat = be->DownloadI32(out);
    std::vector<TokenChoice> ch(static_cast<size_t>(k + 1));
    for (int j = 0; j <= k; ++j) ch[j] = TokenChoice{flat[2 * j], flat[2 * j + 1]};
    const VerifyResult got = VerifyFromChoices(ch.data(), k);
    EXPECT_EQ(got.accepted, want.accepted) << trial;
    EXPECT_EQ(got.next, want.next) << trial;
    if (mode == 0) {
      EXPECT_EQ(got.accepted, agree) << trial;
    }
    // Sampled rows hand back their processed distribution; greedy rows keep their logits.
    const auto back = be->DownloadF32(l);
    for (int j = 0; j <= k; ++j) {
      for (int64_t v = 0; v < V; ++v) {
        EXPECT_EQ(back[j * V + v], mode == 0 ? x[j * V + v] : P[j][v]) << trial << " " << j << " " << v;
      }
    }
    rejected_early += got.accepted < k;
    all_accepted += k > 0 && got.accepted == k;
  }
  EXPECT_GT(rejected_early, 50);
  EXPECT_GT(all_accepted, 20);
}

// ---- the engine ----

struct Models {
  std::unique_ptr<Backend> be = MakeCpuBackend();
  std::unique_ptr<Qwen35Model> target, near;
  Models() {
    target = std::move(Qwen35Model::Load(ModelDir("dense"), be.get())).value();
    near = std::move(Qwen35Model::Load(ModelDir("draft_near"), be.get())).value();
  }
};
Models& M() {
  static Models m;
  return m;
}

EngineRun RunEngine(bool device, const std::string& drafter, int k, const std::vector<GenerationRequest>& reqs,
                    std::vector<int32_t> eos = {}) {
  return specd::testing::RunEngine(M().target.get(), M().near.get(), device, drafter, k, reqs, std::move(eos));
}

TEST(DeviceTokenChoice, GreedyEqualsHostPathAndFixtureAndCopiesNoLogits) {
  auto refs = LoadRefs("dense");
  const auto p = refs.Ids("prompt_ids"), lp = refs.Ids("long_prompt_ids"), greedy = refs.Ids("greedy_ids");
  const std::vector<GenerationRequest> reqs = {Req(p, 24), Req({lp.begin(), lp.begin() + 37}, 24),
                                               Req({lp.begin(), lp.begin() + 3}, 24)};
  for (const std::string d : {"none", "near", "ngram"}) {
    for (int k : {1, 4, 8}) {
      if (d == "none" && k > 1) continue;
      const EngineRun host = RunEngine(false, d, k, reqs);
      const EngineRun dev = RunEngine(true, d, k, reqs);
      EXPECT_EQ(dev.out, host.out) << d << " k=" << k;
      EXPECT_EQ(dev.out[0], std::vector<int32_t>(greedy.begin(), greedy.begin() + 24)) << d << " k=" << k;
      EXPECT_GT(host.host_rows, 0) << d << " k=" << k;
      EXPECT_EQ(dev.host_rows, 0) << "greedy rows must not be copied: " << d << " k=" << k;
    }
  }
}

TEST(DeviceTokenChoice, MinTokensMasksOnTheDeviceAsOnTheHost) {
  auto refs = LoadRefs("dense");
  const auto p = refs.Ids("prompt_ids"), greedy = refs.Ids("greedy_ids");
  // The stop id and the eos id are tokens plain greedy would emit early, so the mask changes the
  // output of both paths; they must agree token for token.
  GenerationRequest a = Req(p, 30);
  a.stop_ids = {greedy[2]};
  a.min_tokens = 12;
  GenerationRequest b = Req(p, 30);
  b.ignore_eos = false;
  b.min_tokens = 9;
  GenerationRequest c = Req(p, 30);  // no mask, shares the batch
  for (int k : {0, 3, 8}) {
    const EngineRun host = RunEngine(false, "near", k, {a, b, c}, {greedy[1], 9999});
    const EngineRun dev = RunEngine(true, "near", k, {a, b, c}, {greedy[1], 9999});
    EXPECT_EQ(dev.out, host.out) << "k=" << k;
    ASSERT_GE(dev.out[0].size(), 12u);
    for (size_t i = 0; i < 12; ++i) EXPECT_NE(dev.out[0][i], greedy[2]) << i;
    ASSERT_GE(dev.out[1].size(), 9u);
    for (size_t i = 0; i < 9; ++i) EXPECT_NE(dev.out[1][i], greedy[1]) << i;
    EXPECT_NE(dev.out[0], std::vector<int32_t>(greedy.begin(), greedy.begin() + dev.out[0].size()));
    EXPECT_EQ(dev.host_rows, 0);
  }
}

// Greedy, rejection (the near drafter hands q rows to the backend) and coupled sequences in one
// batch: the backend's token choice gives the host path's tokens and copies no logits.
TEST(DeviceTokenChoice, MixedBatchCopiesNoLogitsAndKeepsEveryToken) {
  auto refs = LoadRefs("dense");
  const auto p = refs.Ids("prompt_ids"), lp = refs.Ids("long_prompt_ids");
  GenerationRequest g = Req(p, 20);
  GenerationRequest rej = Req({lp.begin(), lp.begin() + 21}, 20);
  rej.sampling.temperature = 1.3f;
  rej.sampling.top_k = 20;
  rej.sampling.seed = 7;
  GenerationRequest cpl = rej;
  cpl.prompt = {lp.begin(), lp.begin() + 9};
  cpl.sampling.mode = SamplingMode::kCoupled;
  cpl.sampling.top_p = 0.9f;
  cpl.min_tokens = 5;
  cpl.ignore_eos = false;
  for (int k : {0, 4}) {
    const EngineRun host = RunEngine(false, "near", k, {g, rej, cpl});
    const EngineRun dev = RunEngine(true, "near", k, {g, rej, cpl});
    EXPECT_EQ(dev.out, host.out) << "k=" << k;
    EXPECT_GT(host.host_rows, 0) << "k=" << k;
    EXPECT_EQ(dev.host_rows, 0) << "sampled rows are chosen by the backend too, k=" << k;
  }
}

}  // namespace
}  // namespace specd::testing
