// The MTP head's forward on the CUDA backend (bf16 weights and activations) against the fp32
// reference of tools/mtp_reference.py: judged by the error transformers' own bf16 forward has
// against fp32 on the same inputs (refs.json), and the ratio printed.
#include "gpu_test_util.h"
#include "mtp_fixture.h"

namespace specd::testing {
namespace {

class GpuMtp : public ::testing::TestWithParam<std::string> {};

struct MtpSetup {
  std::unique_ptr<Qwen35Model> model;
  std::vector<int32_t> ids;
  std::vector<float> hidden_ref, logits_ref;
  int64_t T = 0, H = 0, V = 0;
};

MtpSetup LoadMtp(const std::string& base) {
  MtpSetup s;
  const std::string dir = MtpCheckpoint(base);
  auto m = Qwen35Model::Load(dir, Gpu());
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  if (!m.ok()) return s;
  s.model = std::move(m).value();
  Status st = s.model->LoadMtpHead(dir);
  EXPECT_TRUE(st.ok()) << st.ToString();
  const Refs refs = LoadRefs(base + "_mtp");
  s.ids = refs.Ids("prompt_ids");
  s.hidden_ref = refs.F("hidden");
  s.logits_ref = refs.F("mtp_logits");
  s.T = static_cast<int64_t>(s.ids.size());
  s.H = s.model->config().hidden_size;
  s.V = s.model->config().vocab_size;
  return s;
}

// The head's forward fed the reference's hidden states: its draft logits against fp32.
TEST_P(GpuMtp, DraftLogitsWithinTransformersBf16Error) {
  SPECD_REQUIRE_GPU();
  const std::string base = GetParam();
  Backend& be = *Gpu();
  MtpSetup s = LoadMtp(base);
  ASSERT_NE(s.model, nullptr);
  CacheOptions o;
  o.max_ctx = 128;
  auto mc = s.model->NewMtpCache(o);
  ASSERT_TRUE(mc.ok());
  const int slot = *(*mc)->AllocSlot();
  const std::vector<float> h(s.hidden_ref.begin(), s.hidden_ref.begin() + (s.T - 1) * s.H);
  Tensor ht = be.Upload(h.data(), DType::kF32, {s.T - 1, s.H}, be.act_dtype());
  auto r = s.model->MtpForward({SeqInput{slot, {s.ids.begin() + 1, s.ids.end()}, StateMode::kUpdate, true}}, ht,
                               **mc);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const double err = MaxRowRelErr(be.DownloadF32(r->logits.logits), s.logits_ref, s.V);
  const double budget = MtpBf16Budget(base);
  std::printf("  [gpu mtp %s] draft logits vs fp32 reference: %.3g; transformers bf16 vs fp32: %.3g; ratio %.2f\n",
              base.c_str(), err, budget, err / budget);
  EXPECT_LE(err, budget) << "the bf16 MTP forward is further from fp32 than transformers' bf16 forward";
}

// What the head will read from the target: its final-normed hidden rows (keep_hidden).
TEST_P(GpuMtp, KeptTargetHiddenRowsMatchTheReference) {
  SPECD_REQUIRE_GPU();
  const std::string base = GetParam();
  Backend& be = *Gpu();
  MtpSetup s = LoadMtp(base);
  ASSERT_NE(s.model, nullptr);
  CacheOptions o;
  o.max_ctx = 128;
  auto cache = s.model->NewCache(o);
  ASSERT_TRUE(cache.ok());
  s.model->set_keep_hidden(true);
  const std::vector<float> target_logits = RunForward(*s.model, **cache, *(*cache)->AllocSlot(), s.ids);
  const double target_err = MaxRowRelErr(target_logits, LoadRefs(base).F("prompt_logits"), s.V);
  const std::vector<float> hidden = be.DownloadF32(s.model->last_hidden());
  const double hidden_err = MaxRowRelErr(hidden, s.hidden_ref, s.H);
  double worst = 0;
  int64_t worst_row = -1;
  for (int64_t t = 0; t < s.T; ++t) {
    const std::vector<float> a(hidden.begin() + t * s.H, hidden.begin() + (t + 1) * s.H);
    const std::vector<float> b(s.hidden_ref.begin() + t * s.H, s.hidden_ref.begin() + (t + 1) * s.H);
    const double e = RelL2(a, b);
    if (e > worst) worst = e, worst_row = t;
  }
  std::printf("  [gpu mtp %s] target logits vs reference %.3g; kept hidden %.3g (worst row %lld of %lld)\n",
              base.c_str(), target_err, hidden_err, static_cast<long long>(worst_row), static_cast<long long>(s.T));
  EXPECT_LE(target_err, kBf16Tol);
  EXPECT_LE(hidden_err, kBf16Tol);
}

INSTANTIATE_TEST_SUITE_P(Cases, GpuMtp, ::testing::Values("dense", "moe"));

}  // namespace
}  // namespace specd::testing
