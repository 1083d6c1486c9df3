// The MTP head's forward on the CUDA backend (bf16 weights and activations) against the fp32
// reference of tools/mtp_reference.py: judged by the error transformers' own bf16 forward has
// against fp32 on the same inputs (refs.json), and the ratio printed.
#include "gpu_test_util.h"
#include "mtp_fixture.h"

namespace specd::testing {
namespace {

class GpuMtp : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuMtp, DraftLogitsWithinTransformersBf16Error) {
  SPECD_REQUIRE_GPU();
  const std::string base = GetParam();
  Backend& be = *Gpu();
  const std::string dir = MtpCheckpoint(base);
  auto m = Qwen35Model::Load(dir, &be);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  Qwen35Model& model = **m;
  ASSERT_TRUE(model.LoadMtpHead(dir).ok());
  const Refs refs = LoadRefs(base + "_mtp");
  const std::vector<int32_t> ids = refs.Ids("prompt_ids");
  const std::vector<float> hidden_ref = refs.F("hidden"), logits_ref = refs.F("mtp_logits");
  const int64_t T = static_cast<int64_t>(ids.size()), H = model.config().hidden_size;
  const int64_t V = model.config().vocab_size;

  CacheOptions o;
  o.max_ctx = 128;
  // The target's final-normed hidden states, as the head reads them.
  auto cache = model.NewCache(o);
  ASSERT_TRUE(cache.ok());
  model.set_keep_hidden(true);
  RunForward(model, **cache, *(*cache)->AllocSlot(), ids);
  const double hidden_err = MaxRowRelErr(be.DownloadF32(model.last_hidden()), hidden_ref, H);
  EXPECT_LE(hidden_err, kBf16Tol);

  auto mc = model.NewMtpCache(o);
  ASSERT_TRUE(mc.ok());
  const int slot = *(*mc)->AllocSlot();
  const std::vector<float> h(hidden_ref.begin(), hidden_ref.begin() + (T - 1) * H);
  Tensor ht = be.Upload(h.data(), DType::kF32, {T - 1, H}, be.act_dtype());
  auto r = model.MtpForward({SeqInput{slot, {ids.begin() + 1, ids.end()}, StateMode::kUpdate, true}}, ht, **mc);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const double err = MaxRowRelErr(be.DownloadF32(r->logits.logits), logits_ref, V);
  const double budget = MtpBf16Budget(base);
  std::printf("  [gpu mtp %s] draft logits vs fp32 reference: %.3g; transformers bf16 vs fp32: %.3g; ratio %.2f; "
              "target hidden %.3g\n",
              base.c_str(), err, budget, err / budget, hidden_err);
  EXPECT_LE(err, budget) << "the bf16 MTP forward is further from fp32 than transformers' bf16 forward";
}

INSTANTIATE_TEST_SUITE_P(Cases, GpuMtp, ::testing::Values("dense", "moe"));

}  // namespace
}  // namespace specd::testing
