// The whole model on the GPU: fixture parity at bf16 tolerance, greedy agreement where the
// reference's margin allows it, speculative greedy == plain greedy for every drafter, and slot
// state after verify/commit == token-by-token feeding.
#include <gtest/gtest.h>

#include "gpu_test_util.h"
#include "spec/engine.h"

namespace specd::testing {
namespace {

struct GpuCase {
  const char* model;
  const char* refs;
};

class GpuParity : public ::testing::TestWithParam<GpuCase> {
 protected:
  void SetUp() override {
    SPECD_REQUIRE_GPU();
    auto m = Qwen35Model::Load(ModelDir(GetParam().model), Gpu());
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    model_ = std::move(m).value();
    refs_ = LoadRefs(GetParam().refs);
    CacheOptions o;
    o.max_ctx = 256;
    cache_ = std::move(model_->NewCache(o)).value();
    V_ = model_->config().vocab_size;
  }
  std::unique_ptr<Qwen35Model> model_;
  std::unique_ptr<ModelCache> cache_;
  Refs refs_;
  int64_t V_ = 0;
};

TEST_P(GpuParity, LogitsUncachedCachedAndLong) {
  auto ids = refs_.Ids("prompt_ids");
  int slot = *cache_->AllocSlot();
  auto full = RunForward(*model_, *cache_, slot, ids);
  const double e1 = MaxRowRelErr(full, refs_.F("prompt_logits"), V_);
  cache_->FreeSlot(slot);
  slot = *cache_->AllocSlot();
  auto a = RunForward(*model_, *cache_, slot, {ids.begin(), ids.begin() + 30});
  auto b = RunForward(*model_, *cache_, slot, {ids.begin() + 30, ids.end()});
  a.insert(a.end(), b.begin(), b.end());
  const double e2 = MaxRowRelErr(a, refs_.F("prompt_logits"), V_);
  cache_->FreeSlot(slot);
  slot = *cache_->AllocSlot();
  auto lg = RunForward(*model_, *cache_, slot, refs_.Ids("long_prompt_ids"));
  const double e3 = MaxRowRelErr(lg, refs_.F("long_prompt_logits"), V_);
  std::printf("  [gpu %s] max row rel err: uncached %.3g, prefill30+cached15 %.3g, long150 %.3g\n", GetParam().model, e1,
              e2, e3);
  EXPECT_LE(e1, kBf16Tol);
  EXPECT_LE(e2, kBf16Tol);
  EXPECT_LE(e3, kBf16Tol);
}

TEST_P(GpuParity, GreedyArgmaxAgreesWhereTheMarginAllows) {
  // Teacher-forced over prompt + greedy ids: at each row the GPU's argmax must equal the
  // reference's wherever the reference's top-2 margin exceeds twice the row's max abs error.
  auto ids = refs_.Ids("prompt_ids");
  auto greedy = refs_.Ids("greedy_ids");
  std::vector<int32_t> seq = ids;
  seq.insert(seq.end(), greedy.begin(), greedy.end() - 1);
  CpuBackend cpu;
  auto ref_model = std::move(Qwen35Model::Load(ModelDir(GetParam().model), &cpu)).value();
  CacheOptions o;
  o.max_ctx = 256;
  auto ref_cache = std::move(ref_model->NewCache(o)).value();
  const int rs = *ref_cache->AllocSlot(), gs = *cache_->AllocSlot();
  auto ref = RunForward(*ref_model, *ref_cache, rs, seq);
  auto got = RunForward(*model_, *cache_, gs, seq);
  int checked = 0, skipped = 0;
  for (size_t r = ids.size() - 1; r < seq.size(); ++r) {
    const float* a = ref.data() + r * V_;
    const float* g = got.data() + r * V_;
    float err = 0.f;
    for (int64_t i = 0; i < V_; ++i) err = std::max(err, std::abs(a[i] - g[i]));
    std::vector<float> row(a, a + V_);
    std::nth_element(row.begin(), row.begin() + 1, row.end(), std::greater<float>());
    const float margin = row[0] - row[1];
    if (margin > 2 * err) {
      EXPECT_EQ(Argmax(g, V_), Argmax(a, V_)) << "row " << r << " margin " << margin << " err " << err;
      ++checked;
    } else {
      ++skipped;
    }
  }
  std::printf("  [gpu %s] greedy rows checked %d, within-error margins skipped %d\n", GetParam().model, checked, skipped);
  EXPECT_GT(checked, 30);
}

INSTANTIATE_TEST_SUITE_P(Cases, GpuParity,
                         ::testing::Values(GpuCase{"dense", "dense"}, GpuCase{"dense_bf16", "dense_bf16"},
                                           GpuCase{"moe", "moe"}, GpuCase{"dense_multimodal_layout", "dense"}),
                         [](const auto& info) { return std::string(info.param.model); });

struct GpuModels {
  std::unique_ptr<Qwen35Model> target, near, small;
};
GpuModels& G() {
  static GpuModels g = [] {
    GpuModels m;
    m.target = std::move(Qwen35Model::Load(ModelDir("dense"), Gpu())).value();
    m.near = std::move(Qwen35Model::Load(ModelDir("draft_near"), Gpu())).value();
    m.small = std::move(Qwen35Model::Load(ModelDir("draft_small"), Gpu())).value();
    return m;
  }();
  return g;
}

std::vector<std::vector<int32_t>> RunEngine(const std::string& drafter, int k,
                                            const std::vector<std::vector<int32_t>>& prompts, int n) {
  std::unique_ptr<Drafter> d;
  if (drafter == "ngram") d = MakeNgramDrafter();
  if (drafter == "near" || drafter == "small") {
    d = std::move(MakeDraftModelDrafter(drafter == "near" ? G().near.get() : G().small.get(), 512, 8, 512, 16)).value();
  }
  EngineOptions o;
  o.max_seqs = 8;
  o.max_ctx = 512;
  o.default_k = k;
  auto e = std::move(SpecEngine::Create(G().target.get(), std::move(d), o)).value();
  std::vector<int> ids;
  for (const auto& p : prompts) {
    GenerationRequest r;
    r.prompt = p;
    r.max_tokens = n;
    r.ignore_eos = true;
    ids.push_back(*e->Add(r));
  }
  while (e->HasWork()) EXPECT_TRUE(e->Step().ok());
  std::vector<std::vector<int32_t>> out;
  for (int id : ids) out.push_back(e->Generated(id));
  return out;
}

TEST(GpuSpec, GreedySpeculationEqualsPlainGreedyForEveryDrafter) {
  SPECD_REQUIRE_GPU();
  auto refs = LoadRefs("dense");
  auto p = refs.Ids("prompt_ids"), lp = refs.Ids("long_prompt_ids");
  std::vector<int32_t> rep;
  for (int i = 0; i < 5; ++i) rep.insert(rep.end(), p.begin(), p.begin() + 9);
  const std::vector<std::vector<int32_t>> prompts = {p, {lp.begin(), lp.begin() + 97}, rep, {lp.begin(), lp.begin() + 4}};
  const auto plain = RunEngine("none", 0, prompts, 40);
  const auto fixture = refs.Ids("greedy_ids");
  std::printf("  [gpu] plain greedy %s the fixture's greedy ids\n", plain[0] == fixture ? "equals" : "DIFFERS FROM");
  EXPECT_EQ(plain[0], fixture);
  for (const std::string d : {"near", "small", "ngram"}) {
    for (int k : {1, 2, 4, 8}) {
      const auto single = RunEngine(d, k, {p}, 40);
      EXPECT_EQ(single[0], plain[0]) << d << " k=" << k << " single";
      const auto batched = RunEngine(d, k, prompts, 40);
      for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(batched[i], plain[i]) << d << " k=" << k << " seq " << i;
    }
  }
}

TEST(GpuSpec, RollbackStateEqualsTokenByTokenFeeding) {
  SPECD_REQUIRE_GPU();
  auto& m = *G().target;
  auto refs = LoadRefs("dense");
  auto prompt = refs.Ids("prompt_ids");
  auto greedy = refs.Ids("greedy_ids");
  std::vector<int32_t> truth = prompt;
  truth.insert(truth.end(), greedy.begin(), greedy.end());
  CacheOptions co;
  co.num_slots = 2;
  co.max_ctx = 128;
  co.log_capacity = 9;
  auto cache = std::move(m.NewCache(co)).value();
  const int A = *cache->AllocSlot(), B = *cache->AllocSlot();
  RunForward(m, *cache, A, prompt, false);
  RunForward(m, *cache, B, prompt, false);
  int64_t n = static_cast<int64_t>(prompt.size());
  int step = 0;
  while (n + 7 < static_cast<int64_t>(truth.size())) {
    const int pattern = step++ % 4;
    std::vector<int32_t> drafts;
    if (pattern == 1) drafts = {(truth[n + 1] + 1) % 512, truth[n + 2]};
    if (pattern == 2) drafts = {truth[n + 1], truth[n + 2], truth[n + 3]};
    if (pattern == 3) drafts = {truth[n + 1], (truth[n + 2] + 1) % 512, truth[n + 3]};
    const int keep = pattern == 0 ? 1 : pattern == 1 ? 1 : pattern == 2 ? 4 : 2;
    std::vector<int32_t> toks{truth[n]};
    toks.insert(toks.end(), drafts.begin(), drafts.end());
    ASSERT_TRUE(cache->BeginLog(A, false).ok());
    RunForward(m, *cache, A, toks, true, StateMode::kLog);
    ASSERT_TRUE(cache->Commit(A, keep).ok());
    for (int i = 0; i < keep; ++i) RunForward(m, *cache, B, {toks[i]}, false);
    for (size_t i = 0; i < cache->gdn().size(); ++i) {
      auto conv = Gpu()->DownloadF32(cache->gdn()[i].conv), rec = Gpu()->DownloadF32(cache->gdn()[i].rec);
      const size_t cw = conv.size() / 2, rw = rec.size() / 2;
      EXPECT_LE(RelL2({conv.begin() + A * cw, conv.begin() + (A + 1) * cw}, {conv.begin() + B * cw, conv.begin() + (B + 1) * cw}),
                kBf16Tol) << "conv layer " << i << " step " << step;
      EXPECT_LE(RelL2({rec.begin() + A * rw, rec.begin() + (A + 1) * rw}, {rec.begin() + B * rw, rec.begin() + (B + 1) * rw}),
                kBf16Tol) << "state layer " << i << " step " << step;
    }
    ASSERT_EQ(cache->length(A), cache->length(B));
    n += keep;
  }
}

}  // namespace
}  // namespace specd::testing
