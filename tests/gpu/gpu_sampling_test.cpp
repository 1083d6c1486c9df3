// Token choice on the GPU: ArgmaxRows and MaskIds equal the CPU reference (the host path's own
// rules) on hard rows at the real vocabulary and the fixture's, and greedy speculation with the
// device token choice gives the fixture's greedy ids while copying no logits to the host.
#include <gtest/gtest.h>


#include "engine_run.h"
#include "gpu_test_util.h"
#include "speculative/engine.h"
#include "token_choice_cases.h"

namespace specd::testing {
namespace {

constexpr int64_t kQwenVocab = 248320;

std::vector<int32_t> ArgmaxOn(Backend& be, const std::vector<float>& x, int64_t R, int64_t V, int64_t offset = 0) {
  // offset > 0 puts the rows at a misaligned base (the kernel's scalar path).
  std::vector<float> padded(static_cast<size_t>(offset), 1.f);
  padded.insert(padded.end(), x.begin(), x.end());
  Tensor all = be.Upload(padded.data(), DType::kF32, {static_cast<int64_t>(padded.size())}, DType::kF32);
  Tensor l = all.Slice(offset, {R, V});
  Tensor ids = be.Alloc(DType::kI32, {R});
  be.ArgmaxRows(l, ids);
  auto out = be.DownloadI32(ids);
  EXPECT_TRUE(be.TakeError().ok());
  return out;
}

TEST(GpuTokenChoice, ArgmaxRowsEqualsCpuReference) {
  SPECD_REQUIRE_GPU();
  auto cpu = MakeCpuBackend();
  for (int64_t V : {kQwenVocab, int64_t{512}, int64_t{4099}, int64_t{1}, int64_t{7}}) {
    for (int64_t R : {1, 9, 33}) {
      const auto x = HardLogits(R, V, static_cast<uint64_t>(V * 100 + R));
      const auto want = ArgmaxOn(*cpu, x, R, V);
      for (int64_t offset : {0, 1}) {
        const auto got = ArgmaxOn(*Gpu(), x, R, V, offset);
        ASSERT_EQ(got.size(), want.size());
        for (int64_t r = 0; r < R; ++r) {
          EXPECT_EQ(got[r], want[r]) << "V " << V << " R " << R << " row " << r << " (case " << r % 12
                                     << ") offset " << offset;
        }
      }
    }
  }
}

TEST(GpuTokenChoice, HardRowsAtTheRealVocabHitEveryCase) {
  // Each hard case placed on a row of its own at V = 248,320 and checked against the rule
  // itself, so a reference that drifted with the kernel would still be caught.
  SPECD_REQUIRE_GPU();
  const int64_t V = kQwenVocab, R = 12;
  const auto x = HardLogits(R, V, 5);
  const auto got = ArgmaxOn(*Gpu(), x, R, V);
  for (int64_t r = 0; r < R; ++r) EXPECT_EQ(got[r], ExpectedArgmax(x.data() + r * V, V)) << "case " << r;
}

TEST(GpuTokenChoice, MaskIdsThenArgmaxEqualsCpuReference) {
  SPECD_REQUIRE_GPU();
  auto cpu = MakeCpuBackend();
  for (int64_t V : {kQwenVocab, int64_t{512}}) {
    for (int64_t R : {1, 9, 33}) {
      const auto x = RandomVec(static_cast<size_t>(R * V), static_cast<uint64_t>(R + V), 6.f);
      // Ban each row's own argmax, its runner-up region and padding/out-of-range entries, so
      // the masked answer differs from the unmasked one.
      const int64_t M = 4;
      std::vector<int32_t> ban(static_cast<size_t>(R * M), -1);
      for (int64_t r = 0; r < R; ++r) {
        ban[r * M] = ArgmaxF(x.data() + r * V, V);
        ban[r * M + 1] = static_cast<int32_t>((r * 7919) % V);
        ban[r * M + 2] = r % 2 ? static_cast<int32_t>(V) : -1;
      }
      std::vector<int32_t> res[2];
      std::vector<float> masked[2];
      Backend* bes[2] = {cpu.get(), Gpu()};
      for (int i = 0; i < 2; ++i) {
        Tensor l = bes[i]->Upload(x.data(), DType::kF32, {R, V}, DType::kF32);
        Tensor b = bes[i]->Upload(ban.data(), DType::kI32, {R, M}, DType::kI32);
        Tensor ids = bes[i]->Alloc(DType::kI32, {R});
        bes[i]->MaskIds(l, b);
        bes[i]->ArgmaxRows(l, ids);
        res[i] = bes[i]->DownloadI32(ids);
        masked[i] = bes[i]->DownloadF32(l);
        EXPECT_TRUE(bes[i]->TakeError().ok());
      }
      EXPECT_EQ(res[1], res[0]) << "V " << V << " R " << R;
      EXPECT_TRUE(masked[1] == masked[0]) << "V " << V << " R " << R;
      for (int64_t r = 0; r < R; ++r) EXPECT_NE(res[1][r], ban[r * M]) << r;
    }
  }
}

TEST(GpuTokenChoice, BadShapesAreReportedNotRun) {
  SPECD_REQUIRE_GPU();
  Tensor l = Gpu()->Alloc(DType::kF32, {3, 100});
  Tensor wrong = Gpu()->Alloc(DType::kI64, {3});
  Gpu()->ArgmaxRows(l, wrong);
  EXPECT_FALSE(Gpu()->TakeError().ok());
  Tensor short_ids = Gpu()->Alloc(DType::kI32, {2});
  Gpu()->ArgmaxRows(l, short_ids);
  EXPECT_FALSE(Gpu()->TakeError().ok());
  Tensor ban = Gpu()->Alloc(DType::kI32, {2, 4});
  Gpu()->MaskIds(l, ban);
  EXPECT_FALSE(Gpu()->TakeError().ok());
}

// ---- the engine on the GPU ----

struct Models {
  std::unique_ptr<Qwen35Model> target, near;
};
Models& G() {
  static Models m = [] {
    Models g;
    g.target = std::move(Qwen35Model::Load(ModelDir("dense"), Gpu())).value();
    g.near = std::move(Qwen35Model::Load(ModelDir("draft_near"), Gpu())).value();
    return g;
  }();
  return m;
}

EngineRun RunEngine(bool device, const std::string& drafter, int k, const std::vector<GenerationRequest>& reqs) {
  return specd::testing::RunEngine(G().target.get(), G().near.get(), device, drafter, k, reqs);
}

TEST(GpuTokenChoice, GreedySpeculationOnTheDeviceEqualsFixtureAndHostPath) {
  SPECD_REQUIRE_GPU();
  auto refs = LoadRefs("dense");
  const auto p = refs.Ids("prompt_ids"), lp = refs.Ids("long_prompt_ids"), fixture = refs.Ids("greedy_ids");
  const std::vector<GenerationRequest> single = {Req(p, 40)};
  const std::vector<GenerationRequest> batch = {Req(p, 40), Req({lp.begin(), lp.begin() + 97}, 40),
                                                Req({lp.begin(), lp.begin() + 4}, 40)};
  for (const std::string d : {"none", "near", "ngram"}) {
    for (int k : {1, 4, 8}) {
      if (d == "none" && k > 1) continue;
      const EngineRun dev1 = RunEngine(true, d, k, single);
      EXPECT_EQ(dev1.out[0], fixture) << d << " k=" << k;
      EXPECT_EQ(dev1.host_rows, 0) << d << " k=" << k;
      const EngineRun host = RunEngine(false, d, k, batch);
      const EngineRun dev = RunEngine(true, d, k, batch);
      EXPECT_EQ(dev.out, host.out) << d << " k=" << k;
      EXPECT_EQ(dev.out[0], fixture) << d << " k=" << k;
      EXPECT_EQ(dev.host_rows, 0) << d << " k=" << k;
      EXPECT_GT(host.host_rows, 0) << d << " k=" << k;
    }
  }
}

TEST(GpuTokenChoice, MinTokensMaskAndMixedBatchEqualHostPath) {
  SPECD_REQUIRE_GPU();
  auto refs = LoadRefs("dense");
  const auto p = refs.Ids("prompt_ids"), lp = refs.Ids("long_prompt_ids"), fixture = refs.Ids("greedy_ids");
  GenerationRequest masked = Req(p, 30);
  masked.stop_ids = {fixture[2]};
  masked.min_tokens = 12;
  GenerationRequest sampled = Req({lp.begin(), lp.begin() + 21}, 30);
  sampled.sampling.temperature = 1.2f;
  sampled.sampling.top_k = 20;
  sampled.sampling.seed = 3;
  GenerationRequest coupled = sampled;
  coupled.prompt = {lp.begin(), lp.begin() + 9};
  coupled.sampling.mode = SamplingMode::kCoupled;
  coupled.sampling.top_k = 0;
  coupled.sampling.top_p = 0.9f;
  GenerationRequest nucleus = sampled;
  nucleus.prompt = {lp.begin(), lp.begin() + 40};
  nucleus.sampling.top_k = 0;
  nucleus.sampling.top_p = 0.8f;
  nucleus.sampling.min_p = 0.01f;
  const std::vector<GenerationRequest> reqs = {masked, sampled, Req(p, 30), coupled, nucleus};
  for (int k : {0, 4}) {
    const EngineRun host = RunEngine(false, "near", k, reqs);
    const EngineRun dev = RunEngine(true, "near", k, reqs);
    EXPECT_EQ(dev.out, host.out) << "k=" << k;
    ASSERT_GE(dev.out[0].size(), 12u);
    for (size_t i = 0; i < 12; ++i) EXPECT_NE(dev.out[0][i], fixture[2]) << i;
    EXPECT_GT(host.host_rows, 0) << "k=" << k;
    EXPECT_EQ(dev.host_rows, 0) << "sampled rows are chosen on the device too, k=" << k;
  }
}

}  // namespace
}  // namespace specd::testing
