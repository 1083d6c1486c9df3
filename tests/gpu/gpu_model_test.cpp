// The whole model on the GPU: fixture parity at bf16 tolerance, greedy agreement where the
// reference's margin allows it, speculative greedy == plain greedy for every drafter, and slot
// state after verify/commit == token-by-token feeding.
#include <gtest/gtest.h>

#include "gpu_test_util.h"
#include "checkpoint/presets.h"
#include <algorithm>
#include <filesystem>
#include <map>

#include "checkpoint/safetensors.h"
#include "speculative/engine.h"

namespace specd::testing {
namespace {

struct GpuCase {
  const char* model;
  const char* refs;
};

// A copy of the checkpoint whose tensors hold exactly what the GPU stores: every weight rounded
// to bf16 except A_log and dt_bias (kept fp32). The CPU reference run on it separates the
// kernels' error from the quantisation of an fp32 checkpoint to bf16 weights.
// With router_scale != 1 the MoE router weights are scaled too (see the MoE test).
std::string Bf16RoundedCopy(const std::string& name, float router_scale = 1.f) {
  const std::string src = ModelDir(name);
  const std::string dst = ::testing::TempDir() + "/specd_bf16_" + name + (router_scale != 1.f ? "_sharp" : "");
  std::filesystem::create_directories(dst);
  std::filesystem::copy_file(src + "/config.json", dst + "/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  auto ck = std::move(Checkpoint::Open(src)).value();
  std::map<std::string, TensorToWrite> out;
  for (const auto& n : ck->Names()) {
    auto v = std::move(ck->ReadF32(n)).value();
    if (n.ends_with("mlp.gate.weight")) {
      for (auto& x : v) x *= router_scale;
    }
    const bool keep = n.ends_with("A_log") || n.ends_with("dt_bias");
    out[n] = F32Tensor(ck->Find(n)->shape, keep ? v : RoundBf16(v));
  }
  EXPECT_TRUE(SaveSafetensors(dst + "/model.safetensors", out).ok());
  return dst;
}

class GpuParity : public ::testing::TestWithParam<GpuCase> {
 protected:
  void SetUp() override {
    SPECD_REQUIRE_GPU();
    auto m = Qwen35Model::Load(ModelDir(GetParam().model), Gpu());
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    model_ = std::move(m).value();
    refs_ = LoadRefs(GetParam().refs);
    ref_model_ = std::move(Qwen35Model::Load(Bf16RoundedCopy(GetParam().model), &cpu_)).value();
    V_ = model_->config().vocab_size;
  }
  // GPU and CPU-reference logits of one forward (or prefill + cached rest when split > 0).
  std::pair<std::vector<float>, std::vector<float>> Both(const std::vector<int32_t>& ids, size_t split) {
    std::vector<float> out[2];
    Qwen35Model* ms[2] = {model_.get(), ref_model_.get()};
    // The reference replays the GPU's MoE routing (see SetMoeRoutingHooks): routing near-ties
    // that bf16 flips would otherwise make whole rows differ for a reason that is not an error.
    std::vector<std::vector<int32_t>> routing;
    Gpu()->SetMoeRoutingHooks(&routing, nullptr);
    for (int i = 0; i < 2; ++i) {
      if (i == 1) {
        Gpu()->SetMoeRoutingHooks(nullptr, nullptr);
        cpu_.SetMoeRoutingHooks(nullptr, &routing);
      }
      CacheOptions o;
      o.max_ctx = 256;
      auto cache = std::move(ms[i]->NewCache(o)).value();
      const int slot = *cache->AllocSlot();
      if (split > 0) {
        out[i] = RunForward(*ms[i], *cache, slot, {ids.begin(), ids.begin() + split});
        auto b = RunForward(*ms[i], *cache, slot, {ids.begin() + split, ids.end()});
        out[i].insert(out[i].end(), b.begin(), b.end());
      } else {
        out[i] = RunForward(*ms[i], *cache, slot, ids);
      }
    }
    cpu_.SetMoeRoutingHooks(nullptr, nullptr);
    return {out[0], out[1]};
  }
  // Fraction of rows within tol, the worst row, and the first row over tol (-1: none).
  std::tuple<double, double, int> RowStats(const std::vector<float>& got, const std::vector<float>& ref, double tol) {
    int ok = 0, rows = 0, first_bad = -1;
    double worst = 0;
    for (size_t r = 0; r * V_ < ref.size(); ++r, ++rows) {
      std::vector<float> g(got.begin() + r * V_, got.begin() + (r + 1) * V_), f(ref.begin() + r * V_, ref.begin() + (r + 1) * V_);
      const double e = RelL2(g, f);
      worst = std::max(worst, e);
      ok += e <= tol;
      if (e > tol && first_bad < 0) first_bad = static_cast<int>(r);
    }
    return {static_cast<double>(ok) / rows, worst, first_bad};
  }
  CpuBackend cpu_;
  std::unique_ptr<Qwen35Model> model_, ref_model_;
  Refs refs_;
  int64_t V_ = 0;
};

TEST_P(GpuParity, LogitsUncachedCachedAndLong) {
  auto ids = refs_.Ids("prompt_ids");
  struct Run {
    const char* what;
    std::vector<int32_t> ids;
    size_t split;
  };
  for (const Run& r : {Run{"uncached", ids, 0}, Run{"prefill30+cached15", ids, 30},
                       Run{"long150", refs_.Ids("long_prompt_ids"), 0}}) {
    auto [got, ref] = Both(r.ids, r.split);
    const double whole = RelL2(got, ref);
    auto [frac, worst, first_bad] = RowStats(got, ref, kBf16Tol);
    std::printf("  [gpu %s] %s: rel L2 %.3g, worst row %.3g, rows within 2e-2: %.0f%%, first row over: %d\n",
                GetParam().model, r.what, whole, worst, 100 * frac, first_bad);
    // MoE included: the reference replays the GPU's routing, so every row is held to bf16
    // tolerance (the fixture has routing near-ties: 2nd and 3rd expert 5e-5 apart at token 26).
    EXPECT_LE(whole, kBf16Tol) << r.what;
    EXPECT_GE(frac, 0.95) << r.what;
  }
}

TEST_P(GpuParity, GreedyArgmaxAgreesWhereTheMarginAllows) {
  // Teacher-forced over prompt + greedy ids: at each row the GPU's argmax must equal the
  // reference's wherever the reference's top-2 margin exceeds twice the row's max abs error.
  auto ids = refs_.Ids("prompt_ids");
  auto greedy = refs_.Ids("greedy_ids");
  std::vector<int32_t> seq = ids;
  seq.insert(seq.end(), greedy.begin(), greedy.end() - 1);
  auto [got, ref] = Both(seq, 0);
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
  EXPECT_GT(checked, 25);
}

INSTANTIATE_TEST_SUITE_P(Cases, GpuParity,
                         ::testing::Values(GpuCase{"dense", "dense"}, GpuCase{"dense_bf16", "dense_bf16"},
                                           GpuCase{"moe", "moe"}, GpuCase{"dense_multimodal_layout", "dense"},
                                           // FP8 checkpoints: the GPU holds their weights widened to bf16.
                                           GpuCase{"dense_fp8", "dense_fp8"}, GpuCase{"moe_fp8", "moe_fp8"}),
                         [](const auto& info) { return std::string(info.param.model); });

TEST(GpuParityFixture, Bf16CheckpointAgainstTransformersRefs) {
  // dense_bf16's refs are transformers' fp32 forward of exactly the weights the GPU holds.
  SPECD_REQUIRE_GPU();
  auto m = std::move(Qwen35Model::Load(ModelDir("dense_bf16"), Gpu())).value();
  auto refs = LoadRefs("dense_bf16");
  CacheOptions o;
  o.max_ctx = 256;
  auto cache = std::move(m->NewCache(o)).value();
  const int slot = *cache->AllocSlot();
  auto got = RunForward(*m, *cache, slot, refs.Ids("prompt_ids"));
  const double e = RelL2(got, refs.F("prompt_logits"));
  std::printf("  [gpu dense_bf16 vs transformers] rel L2 %.3g\n", e);
  EXPECT_LE(e, kBf16Tol);
}

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
  auto e = std::move(SpeculativeEngine::Create(G().target.get(), std::move(d), o)).value();
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
      // Per-slot widths from the tensors' leading dimension (the cache keeps a pad slot past A and B).
      const size_t cw = conv.size() / static_cast<size_t>(cache->gdn()[i].conv.dim(0));
      const size_t rw = rec.size() / static_cast<size_t>(cache->gdn()[i].rec.dim(0));
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

namespace specd::testing {
namespace {

// The property the product exists for, bit for bit on the GPU: the logits of a position do not
// depend on how many tokens share the call. A verify forward of T tokens over a populated cache
// (kLog) gives exactly the logits that T single-token decode steps give at the same positions,
// with graphs on and off, at the fixture shapes and at real Qwen3.5-0.8B shapes (random weights:
// real projection sizes, multi-warp rows, split-K attention).
TEST(GpuBatchInvariance, VerifyRowsEqualDecodeStepsBitwise) {
  SPECD_REQUIRE_GPU();
  std::vector<std::pair<std::string, std::unique_ptr<Qwen35Model>>> models;
  models.emplace_back("dense fixture", std::move(Qwen35Model::Load(ModelDir("dense"), Gpu())).value());
  models.emplace_back("Qwen3.5-0.8B shapes", Qwen35Model::Random(ReleasedShapes("0.8B").value(), Gpu(), 3));
  models.emplace_back("moe fixture", std::move(Qwen35Model::Load(ModelDir("moe"), Gpu())).value());
  for (auto& [name, m] : models) {
    const int64_t V = m->config().vocab_size;
    std::vector<int32_t> ids(60);
    for (int i = 0; i < 60; ++i) ids[i] = static_cast<int32_t>((i * 7919 + 13) % std::min<int64_t>(V, 4000));
    for (int graphs = 0; graphs < 2; ++graphs) {
      ChangeOptions(*Gpu(), [&](BackendOptions& o) { o.cuda_graphs = graphs == 1; });
      for (int T : {2, 5, 9, 16}) {
        CacheOptions o;
        o.max_ctx = 256;
        o.log_capacity = 17;
        auto a = std::move(m->NewCache(o)).value();
        auto b = std::move(m->NewCache(o)).value();
        const int sa = *a->AllocSlot(), sb = *b->AllocSlot();
        RunForward(*m, *a, sa, {ids.begin(), ids.begin() + 40}, false);
        RunForward(*m, *b, sb, {ids.begin(), ids.begin() + 40}, false);
        std::vector<float> dec;
        for (int t = 0; t < T; ++t) {
          auto l = RunForward(*m, *a, sa, {ids[40 + t]}, false);
          dec.insert(dec.end(), l.begin(), l.end());
        }
        ASSERT_TRUE(b->BeginLog(sb, false).ok());
        auto ver = RunForward(*m, *b, sb, {ids.begin() + 40, ids.begin() + 40 + T}, true, StateMode::kLog);
        ASSERT_EQ(dec.size(), ver.size());
        int first_diff = -1;
        for (size_t i = 0; i < dec.size() && first_diff < 0; ++i) {
          if (dec[i] != ver[i]) first_diff = static_cast<int>(i / V);
        }
        EXPECT_EQ(first_diff, -1) << name << ", graphs " << graphs << ", T=" << T << ": first row that differs";
        // And the committed state continues exactly as the decoded one.
        ASSERT_TRUE(b->Commit(sb, T).ok());
        EXPECT_EQ(RunForward(*m, *a, sa, {ids[40 + T]}, false), RunForward(*m, *b, sb, {ids[40 + T]}, false))
            << name << ", graphs " << graphs << ", T=" << T << ": next decode step after the commit";
      }
    }
    ChangeOptions(*Gpu(), [&](BackendOptions& o) { o.cuda_graphs = true; });
    // Batched: 3, 8 and 12 sequences verify 5 tokens each in one call (15, 40, 60 rows: the
    // projections' 16-row and wide tensor-core forms, the latter opt-in: --batch-invariant); each
    // one's rows equal its own decode steps.
    const KernelOptionOn wide(&BackendOptions::skinny_wide);
    for (int nseq : {3, 8, 12}) {
      CacheOptions o;
      o.max_ctx = 256;
      o.num_slots = nseq;
      auto a = std::move(m->NewCache(o)).value();
      auto b = std::move(m->NewCache(o)).value();
      std::vector<SeqInput> batch;
      std::vector<std::vector<float>> dec(static_cast<size_t>(nseq));
      for (int q = 0; q < nseq; ++q) {
        const int sa = *a->AllocSlot(), sb = *b->AllocSlot();
        const int past = 20 + 3 * q;
        RunForward(*m, *a, sa, {ids.begin(), ids.begin() + past}, false);
        RunForward(*m, *b, sb, {ids.begin(), ids.begin() + past}, false);
        for (int t = 0; t < 5; ++t) {
          auto l = RunForward(*m, *a, sa, {ids[past + t]}, false);
          dec[q].insert(dec[q].end(), l.begin(), l.end());
        }
        ASSERT_TRUE(b->BeginLog(sb, false).ok());
        batch.push_back(SeqInput{sb, {ids.begin() + past, ids.begin() + past + 5}, StateMode::kLog, true});
      }
      auto out = m->Forward(batch, *b);
      ASSERT_TRUE(out.ok()) << out.status().ToString();
      const auto all = Gpu()->DownloadF32(out->logits);
      for (int q = 0; q < nseq; ++q) {
        std::vector<float> rows(all.begin() + out->row0[q] * V, all.begin() + (out->row0[q] + 5) * V);
        EXPECT_TRUE(rows == dec[q]) << name << ": batched verify of " << nseq << " sequences, sequence " << q;
      }
    }
  }
}

// Dense and MoE (routing, grouping and experts on the device, nothing waits for the host).
class GpuGraphsModel : public ::testing::TestWithParam<const char*> {};

TEST_P(GpuGraphsModel, CapturedDecodeAndVerifyStepsEqualOpByOp) {
  SPECD_REQUIRE_GPU();
  auto m = std::move(Qwen35Model::Load(ModelDir(GetParam()), Gpu())).value();
  auto refs = LoadRefs(GetParam());
  auto ids = refs.Ids("prompt_ids");
  std::vector<float> out[2];
  int64_t replays[2] = {0, 0};
  for (int graphs = 0; graphs < 2; ++graphs) {
    ChangeOptions(*Gpu(), [&](BackendOptions& o) { o.cuda_graphs = graphs == 1; });
    const int64_t replays0 = Gpu()->graph_replays();
    CacheOptions o;
    o.max_ctx = 256;
    auto cache = std::move(m->NewCache(o)).value();
    const int slot = *cache->AllocSlot();
    auto add = [&](const std::vector<float>& v) { out[graphs].insert(out[graphs].end(), v.begin(), v.end()); };
    add(RunForward(*m, *cache, slot, {ids.begin(), ids.begin() + 30}, false));
    // Decode steps replay one graph at moving positions; verify spans of two lengths, committed.
    for (int rep = 0; rep < 2; ++rep) {
      for (int t = 30; t < 36; ++t) add(RunForward(*m, *cache, slot, {ids[t]}, false));
      for (int T : {5, 3}) {
        ASSERT_TRUE(cache->BeginLog(slot, false).ok());
        add(RunForward(*m, *cache, slot, {ids.begin() + 36, ids.begin() + 36 + T}, true, StateMode::kLog));
        ASSERT_TRUE(cache->Commit(slot, 2).ok());
      }
    }
    replays[graphs] = Gpu()->graph_replays() - replays0;
  }
  ChangeOptions(*Gpu(), [&](BackendOptions& o) { o.cuda_graphs = true; });
  // Every decode and verify forward (2 x (6 + 2)) ran as a graph replay; none without graphs.
  EXPECT_EQ(replays[0], 0);
  EXPECT_EQ(replays[1], 16);
  ASSERT_EQ(out[0].size(), out[1].size());
  EXPECT_EQ(out[0], out[1]);  // the same kernels on the same inputs: bitwise equal
  if (!m->config().is_moe) return;
  // While routing is recorded (a test hook that reads ids on the host) nothing is captured or
  // replayed, every MoE layer of every forward is recorded, and the logits stay those of the
  // op-by-op run.
  std::vector<std::vector<int32_t>> routing;
  Gpu()->SetMoeRoutingHooks(&routing, nullptr);
  const int64_t replays0 = Gpu()->graph_replays();
  CacheOptions o;
  o.max_ctx = 256;
  auto cache = std::move(m->NewCache(o)).value();
  const int slot = *cache->AllocSlot();
  std::vector<float> hooked = RunForward(*m, *cache, slot, {ids.begin(), ids.begin() + 30}, false);
  for (int t = 30; t < 36; ++t) {
    const auto l = RunForward(*m, *cache, slot, {ids[t]}, false);
    hooked.insert(hooked.end(), l.begin(), l.end());
  }
  Gpu()->SetMoeRoutingHooks(nullptr, nullptr);
  EXPECT_EQ(Gpu()->graph_replays(), replays0);
  EXPECT_EQ(routing.size(), 7u * static_cast<size_t>(m->config().num_hidden_layers));
  ASSERT_GE(out[0].size(), hooked.size());
  EXPECT_TRUE(std::equal(hooked.begin(), hooked.end(), out[0].begin())) << "prefill + 6 decode steps, routing recorded";
}

INSTANTIATE_TEST_SUITE_P(Models, GpuGraphsModel, ::testing::Values("dense", "moe"),
                         [](const auto& info) { return std::string(info.param); });

// Paged KV on the GPU: a slot whose blocks are scattered over the pool (other slots grow, are
// freed and reallocated between its steps, blocks of 4 rows so its table changes every few
// tokens) gives the same logits as a slot alone in a fresh pool, with graphs replaying its decode
// and verify steps while the table moves under them.
TEST(GpuGraphs, ScatteredPagedSlotEqualsContiguousWhileGraphsReplay) {
  SPECD_REQUIRE_GPU();
  auto m = std::move(Qwen35Model::Load(ModelDir("dense"), Gpu())).value();
  auto ids = LoadRefs("dense").Ids("prompt_ids");
  ASSERT_GE(ids.size(), 45u);
  auto run = [&](bool scatter, bool graphs) {
    ChangeOptions(*Gpu(), [&](BackendOptions& o) { o.cuda_graphs = graphs; });
    CacheOptions o;
    o.num_slots = 3;
    o.max_ctx = 128;
    o.kv_block_size = 4;
    o.log_capacity = 9;
    auto cache = std::move(m->NewCache(o)).value();
    const int a = *cache->AllocSlot();
    const int other = scatter ? *cache->AllocSlot() : -1;
    int noise = scatter ? *cache->AllocSlot() : -1;
    std::vector<float> out;
    auto add = [&](const std::vector<float>& v) { out.insert(out.end(), v.begin(), v.end()); };
    add(RunForward(*m, *cache, a, {ids.begin(), ids.begin() + 10}, false));
    size_t t = 10;
    for (int step = 0; t + 5 <= 42; ++step) {
      if (scatter) {
        RunForward(*m, *cache, other, {ids[t]}, false);
        if (step % 3 == 0) {
          cache->FreeSlot(noise);
          noise = *cache->AllocSlot();
          RunForward(*m, *cache, noise, {ids.begin(), ids.begin() + (step % 2 == 0 ? 5 : 1)}, false);
        }
      }
      if (step % 4 == 3) {  // a verify of 5 tokens, 2 kept: the tail's blocks go back
        EXPECT_TRUE(cache->BeginLog(a, false).ok());
        add(RunForward(*m, *cache, a, {ids.begin() + t, ids.begin() + t + 5}, true, StateMode::kLog));
        EXPECT_TRUE(cache->Commit(a, 2).ok());
        t += 2;
      } else {
        add(RunForward(*m, *cache, a, {ids[t]}, false));
        t += 1;
      }
    }
    const auto blocks = cache->kv_blocks(a);
    bool gap = false;
    for (size_t i = 1; i < blocks.size(); ++i) gap |= blocks[i] != blocks[i - 1] + 1;
    EXPECT_EQ(gap, scatter) << "layout under test";
    return out;
  };
  const auto want = run(false, false);
  for (bool graphs : {false, true}) {
    const auto got = run(true, graphs);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(got, want) << "graphs " << graphs;  // same kernels, same rows: bitwise equal
  }
  ChangeOptions(*Gpu(), [&](BackendOptions& o) { o.cuda_graphs = true; });
}

}  // namespace
}  // namespace specd::testing
