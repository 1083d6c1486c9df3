// The MTP head's forward against tools/mtp_reference.py (PyTorch on transformers' Qwen3.5 modules;
// fixtures tests/fixtures/qwen35-tiny/{dense,moe}_mtp): the target's final-normed hidden states
// the head reads, then the draft logits of every prompt position, whole and in chunks through the
// head's own cache. CPU fp32: <= 1e-4 relative per row.
#include <gtest/gtest.h>

#include "mtp_fixture.h"

namespace specd::testing {
namespace {

class MtpParity : public ::testing::TestWithParam<std::string> {};

TEST_P(MtpParity, HiddenStatesAndDraftLogitsMatchTheReference) {
  const std::string base = GetParam();
  auto be = MakeCpuBackend();
  auto m = Qwen35Model::Load(MtpCheckpoint(base), be.get());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  Qwen35Model& model = **m;
  ASSERT_TRUE(model.LoadMtpHead(MtpCheckpoint(base)).ok());
  const Refs refs = LoadRefs(base + "_mtp");
  const std::vector<int32_t> ids = refs.Ids("prompt_ids");
  const std::vector<float> hidden_ref = refs.F("hidden"), logits_ref = refs.F("mtp_logits");
  const int64_t T = static_cast<int64_t>(ids.size()), H = model.config().hidden_size;
  const int64_t V = model.config().vocab_size;
  ASSERT_EQ(static_cast<int64_t>(hidden_ref.size()), T * H);
  ASSERT_EQ(static_cast<int64_t>(logits_ref.size()), (T - 1) * V);

  // (1) What the head reads: the target's final-normed hidden state at every prompt position.
  CacheOptions o;
  o.max_ctx = 128;
  auto cache = model.NewCache(o);
  ASSERT_TRUE(cache.ok());
  model.set_keep_hidden(true);
  RunForward(model, **cache, *(*cache)->AllocSlot(), ids);
  const std::vector<float> hidden = be->DownloadF32(model.last_hidden());
  EXPECT_LE(MaxRowRelErr(hidden, hidden_ref, H), 1e-4);

  // (2) The head over the prompt: row t pairs x_{t+1} with h_t, at position t.
  const std::vector<int32_t> next(ids.begin() + 1, ids.end());
  auto run = [&](const std::vector<int64_t>& cuts) {
    auto mc = model.NewMtpCache(o);
    EXPECT_TRUE(mc.ok());
    const int slot = *(*mc)->AllocSlot();
    std::vector<float> out;
    for (size_t c = 0; c + 1 < cuts.size(); ++c) {
      const int64_t a = cuts[c], b = cuts[c + 1];
      const std::vector<float> h(hidden_ref.begin() + a * H, hidden_ref.begin() + b * H);
      Tensor ht = be->Upload(h.data(), DType::kF32, {b - a, H}, be->act_dtype());
      auto r = model.MtpForward({SeqInput{slot, {next.begin() + a, next.begin() + b}, StateMode::kUpdate, true}}, ht,
                                **mc);
      EXPECT_TRUE(r.ok()) << r.status().ToString();
      if (!r.ok()) return out;
      EXPECT_EQ(r->hidden.dim(0), b - a);
      const std::vector<float> l = be->DownloadF32(r->logits.logits);
      out.insert(out.end(), l.begin(), l.end());
    }
    return out;
  };
  const std::vector<float> whole = run({0, T - 1});
  EXPECT_LE(MaxRowRelErr(whole, logits_ref, V), 1e-4) << "the head over the prompt at once";
  // Through the head's cache: the same logits in chunks (its KV cache carries the earlier rows).
  const std::vector<float> chunked = run({0, 1, 13, 30, T - 1});
  EXPECT_LE(MaxRowRelErr(chunked, logits_ref, V), 1e-4) << "in chunks";
  const double budget = MtpBf16Budget(base);
  std::printf("  [mtp %s] fp32 vs reference: %.3g (transformers bf16 vs fp32 on the same inputs: %.3g)\n",
              base.c_str(), MaxRowRelErr(whole, logits_ref, V), budget);
}

TEST(MtpForward, NeedsTheHeadAndMatchingHiddenRows) {
  auto be = MakeCpuBackend();
  auto m = Qwen35Model::Load(ModelDir("dense"), be.get());
  ASSERT_TRUE(m.ok());
  CacheOptions o;
  o.max_ctx = 64;
  auto mc = (*m)->NewMtpCache(o);
  ASSERT_TRUE(mc.ok());
  const int slot = *(*mc)->AllocSlot();
  std::vector<float> h(static_cast<size_t>(3 * (*m)->config().hidden_size), 0.5f);
  Tensor ht = be->Upload(h.data(), DType::kF32, {3, (*m)->config().hidden_size}, be->act_dtype());
  auto r = (*m)->MtpForward({SeqInput{slot, {1, 2, 3}, StateMode::kUpdate, true}}, ht, **mc);
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);

  auto m2 = Qwen35Model::Load(MtpCheckpoint("dense"), be.get());
  ASSERT_TRUE(m2.ok());
  ASSERT_TRUE((*m2)->LoadMtpHead(MtpCheckpoint("dense")).ok());
  auto mc2 = (*m2)->NewMtpCache(o);
  ASSERT_TRUE(mc2.ok());
  const int s2 = *(*mc2)->AllocSlot();
  auto wrong = (*m2)->MtpForward({SeqInput{s2, {1, 2}, StateMode::kUpdate, true}}, ht, **mc2);
  EXPECT_EQ(wrong.status().code(), StatusCode::kInvalidArgument) << "3 hidden rows for 2 tokens";
  EXPECT_EQ((*mc2)->length(s2), 0) << "a refused forward changes no state";
}

INSTANTIATE_TEST_SUITE_P(Cases, MtpParity, ::testing::Values("dense", "moe"));

}  // namespace
}  // namespace specd::testing
