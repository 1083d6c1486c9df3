// The MTP head's forward on the CUDA backend (bf16 weights and activations) against the fp32
// reference of tools/mtp_reference.py: judged by the error transformers' own bf16 forward has
// against fp32 on the same inputs (refs.json), and the ratio printed.
#include "engine_run.h"
#include "gpu_test_util.h"
#include "mtp_fixture.h"
#include "mtp_head_check.h"
#include "mtp_oracle.h"

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

// What the head will read from the target: its final-normed hidden rows (keep_hidden), against
// the CPU engine's (fp32; at parity with transformers to 1e-4, tests/parity/mtp_parity_test.cpp)
// replaying the GPU's MoE routing, as the GPU parity tests do (gpu_model_test.cpp): the MoE
// fixture has a routing near-tie (experts 5e-5 apart at token 26) that bf16 flips, and through
// attention that changes every later row. Held as those tests hold bf16 logits: the whole
// tensor within bf16 tolerance and at least 95 % of the rows.
TEST_P(GpuMtp, KeptTargetHiddenRowsMatchTheCpuEngine) {
  SPECD_REQUIRE_GPU();
  const std::string base = GetParam();
  const std::string dir = MtpCheckpoint(base);
  CpuBackend cpu;
  Backend* backends[2] = {Gpu(), &cpu};
  std::vector<float> logits[2], hidden[2];
  std::vector<std::vector<int32_t>> routing;
  const std::vector<int32_t> ids = LoadRefs(base + "_mtp").Ids("prompt_ids");
  int64_t H = 0, V = 0;
  for (int i = 0; i < 2; ++i) {
    auto m = Qwen35Model::Load(dir, backends[i]);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    H = (*m)->config().hidden_size;
    V = (*m)->config().vocab_size;
    if (i == 0) Gpu()->SetMoeRoutingHooks(&routing, nullptr);
    if (i == 1) {
      Gpu()->SetMoeRoutingHooks(nullptr, nullptr);
      cpu.SetMoeRoutingHooks(nullptr, &routing);
    }
    CacheOptions o;
    o.max_ctx = 128;
    auto cache = (*m)->NewCache(o);
    ASSERT_TRUE(cache.ok());
    (*m)->set_keep_hidden(true);
    logits[i] = RunForward(**m, **cache, *(*cache)->AllocSlot(), ids);
    hidden[i] = backends[i]->DownloadF32((*m)->last_hidden());
  }
  cpu.SetMoeRoutingHooks(nullptr, nullptr);
  auto check = [&](const char* what, const std::vector<float>& got, const std::vector<float>& ref, int64_t width) {
    ASSERT_EQ(got.size(), ref.size());
    int rows = 0, ok = 0;
    for (size_t r = 0; r * width < ref.size(); ++r, ++rows) {
      const std::vector<float> g(got.begin() + r * width, got.begin() + (r + 1) * width);
      const std::vector<float> f(ref.begin() + r * width, ref.begin() + (r + 1) * width);
      ok += RelL2(g, f) <= kBf16Tol;
    }
    const double whole = RelL2(got, ref), frac = static_cast<double>(ok) / rows;
    std::printf("  [gpu mtp %s] %s vs the CPU engine: rel L2 %.3g, rows within 2e-2: %.0f%%\n", base.c_str(), what,
                whole, 100 * frac);
    EXPECT_LE(whole, kBf16Tol) << what;
    EXPECT_GE(frac, 0.95) << what;
  };
  check("target logits", logits[0], logits[1], V);
  check("kept hidden rows", hidden[0], hidden[1], H);
}

// Speculation with the head on the GPU: greedy output equals plain greedy for k = 1..4 (three
// sequences, prompts prefilled in chunks of 7), with the head's own drafts (random head: all
// rejected) and with an oracle's in their place (most kept), and coupled sampling equals plain
// sampling. The engine's verify/decode agreement on the GPU is bitwise, so equality is exact.
TEST_P(GpuMtp, SpeculationEqualsPlainDecoding) {
  SPECD_REQUIRE_GPU();
  const std::string base = GetParam();
  MtpSetup s = LoadMtp(base);
  ASSERT_NE(s.model, nullptr);
  Qwen35Model* m = s.model.get();
  std::vector<GenerationRequest> reqs = {Req(s.ids, 40), Req({s.ids.begin(), s.ids.begin() + 6}, 40),
                                         Req({s.ids[3]}, 40)};
  const EngineRun plain = RunEngine(m, nullptr, true, "none", 0, reqs, {}, 7);
  std::vector<std::vector<int32_t>> refs;
  for (size_t i = 0; i < reqs.size(); ++i) {
    refs.push_back(reqs[i].prompt);
    refs.back().insert(refs.back().end(), plain.out[i].begin(), plain.out[i].end());
  }
  for (int k = 1; k <= 4; ++k) {
    const EngineRun mtp = RunEngine(m, nullptr, true, "mtp", k, reqs, {}, 7);
    EXPECT_EQ(mtp.out, plain.out) << "k " << k;
    EXPECT_GT(mtp.proposed, 0);
    const EngineRun o = RunEngineWith(m, MakeOracleMtp(m, refs, 0.7, 8), true, k, reqs, {}, 7);
    EXPECT_EQ(o.out, plain.out) << "oracle k " << k;
    std::printf("  [gpu mtp %s k=%d] head drafts kept %lld/%lld, oracle drafts kept %lld/%lld\n", base.c_str(), k,
                static_cast<long long>(mtp.accepted), static_cast<long long>(mtp.proposed),
                static_cast<long long>(o.accepted), static_cast<long long>(o.proposed));
    EXPECT_GT(o.accepted, o.proposed / 3);
  }
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].sampling.temperature = 0.8f;
    reqs[i].sampling.seed = 5 + i;
    reqs[i].sampling.mode = SamplingMode::kCoupled;
  }
  EXPECT_EQ(RunEngine(m, nullptr, true, "mtp", 3, reqs, {}, 7).out,
            RunEngine(m, nullptr, true, "none", 0, reqs, {}, 7).out);
}

// Graphs: the target's decode forwards with their hidden rows as a second output, and the head's
// draft steps (hidden input copied into a fixed buffer), replayed from graphs, give bitwise what
// the ops give, step after step of a chained draft.
TEST_P(GpuMtp, GraphsEqualOpsBitwise) {
  SPECD_REQUIRE_GPU();
  MtpSetup s = LoadMtp(GetParam());
  ASSERT_NE(s.model, nullptr);
  Qwen35Model& m = *s.model;
  Backend& be = *Gpu();
  ChangeOptions(be, [&](BackendOptions& o) { o.graph_capture_after = 1; });
  std::vector<float> got[2];
  int64_t replays[2] = {0, 0};
  for (int graphs = 0; graphs < 2; ++graphs) {
    ChangeOptions(be, [&](BackendOptions& o) { o.cuda_graphs = graphs == 1; });
    const int64_t r0 = be.graph_stats().replays;
    CacheOptions o;
    o.num_slots = 3;
    o.max_ctx = 128;
    auto cache = std::move(m.NewCache(o)).value();
    auto head = std::move(m.NewMtpCache(o)).value();
    m.set_keep_hidden(true);
    std::vector<int> slot, hslot;
    for (int i = 0; i < 3; ++i) {
      slot.push_back(*cache->AllocSlot());
      hslot.push_back(*head->AllocSlot());
      RunForward(m, *cache, slot[i], {s.ids.begin(), s.ids.begin() + 10 + 3 * i}, false);
    }
    for (int step = 0; step < 4; ++step) {
      // A decode step of the three sequences (kept hidden rows), then three chained head steps.
      std::vector<SeqInput> in;
      for (int i = 0; i < 3; ++i) in.push_back(SeqInput{slot[i], {s.ids[20 + step + i]}, StateMode::kUpdate, false});
      auto fo = m.Forward(in, *cache);
      ASSERT_TRUE(fo.ok()) << fo.status().ToString();
      for (float v : be.DownloadF32(fo->logits)) got[graphs].push_back(v);
      Tensor h = m.last_hidden();
      for (float v : be.DownloadF32(h)) got[graphs].push_back(v);
      for (int j = 0; j < 3; ++j) {
        std::vector<SeqInput> hin;
        for (int i = 0; i < 3; ++i) hin.push_back(SeqInput{hslot[i], {s.ids[30 + step + j + i]}, StateMode::kUpdate, false});
        auto mo = m.MtpForward(hin, h, *head);
        ASSERT_TRUE(mo.ok()) << mo.status().ToString();
        for (float v : be.DownloadF32(mo->logits.logits)) got[graphs].push_back(v);
        h = mo->hidden;
      }
    }
    replays[graphs] = be.graph_stats().replays - r0;
  }
  ChangeOptions(be, [&](BackendOptions& o) {
    o.cuda_graphs = true;
    o.graph_capture_after = BackendOptions{}.graph_capture_after;
  });
  std::printf("  [gpu mtp %s] graph replays: off %lld, on %lld\n", GetParam().c_str(),
              static_cast<long long>(replays[0]), static_cast<long long>(replays[1]));
  EXPECT_EQ(replays[0], 0);
  EXPECT_GE(replays[1], 8) << "decode and head steps replay graphs";
  ASSERT_EQ(got[0].size(), got[1].size());
  EXPECT_TRUE(got[0] == got[1]) << "graphs change the bits";
}

// The head's cache on the GPU with ten sequences, graphs captured at first sight: decode and head
// batches of ten are padded to a graph bucket of 16, and the padding rows must not reach any
// sequence's cache. After every step each sequence's head K/V equals a sequential run's within
// bf16 noise (a misplaced row among c gives an error near sqrt(2 / c), far above it), and the
// output equals plain greedy. That last needs every row's logits independent of the rows beside
// it: verify batches of ten sequences are 40 rows, so the projections of 17-64 rows run on the
// batch-invariant form (--batch-invariant), and prompt chunks of 6 keep every forward within 64
// rows (H100, d771738: with the default form one of ten outputs flipped a near-tie at token 12).
TEST_P(GpuMtp, HeadCacheWithPaddedGraphBatches) {
  SPECD_REQUIRE_GPU();
  MtpSetup s = LoadMtp(GetParam());
  ASSERT_NE(s.model, nullptr);
  Qwen35Model* m = s.model.get();
  Backend& be = *Gpu();
  const KernelOptionOn wide(&BackendOptions::skinny_wide);
  ChangeOptions(be, [&](BackendOptions& o) { o.graph_capture_after = 1; });
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 10; ++i) {
    const int64_t len = 1 + (i * 5) % static_cast<int64_t>(s.ids.size());
    std::vector<int32_t> p(s.ids.begin(), s.ids.begin() + len);
    p.back() = s.ids[(i * 3) % s.ids.size()];
    reqs.push_back(Req(p, 20));
  }
  const EngineRun plain = RunEngine(m, nullptr, true, "none", 0, reqs, {}, 6);
  EngineOptions o;
  o.max_seqs = 10;
  o.max_ctx = 512;
  o.default_k = 3;
  o.prefill_chunk = 6;
  const int64_t r0 = be.graph_stats().replays;
  const HeadCacheRun r = RunCheckingHeadCache(*m, MakeOracleMtp(m, References(reqs, plain), 0.7, 10), reqs, o, 3e-2);
  const int64_t replays = be.graph_stats().replays - r0;
  ChangeOptions(be, [&](BackendOptions& bo) { bo.graph_capture_after = BackendOptions{}.graph_capture_after; });
  std::printf("  [gpu mtp %s] 10 sequences: %d checks, worst head K/V rel err %.2e, kept %lld, graph replays %lld\n",
              GetParam().c_str(), r.checked, r.worst, static_cast<long long>(r.kept), static_cast<long long>(replays));
  EXPECT_GT(r.checked, 50);
  EXPECT_GT(r.kept, 40) << "verifies kept drafts";
  EXPECT_GT(replays, 10) << "the batches ran from graphs";
  EXPECT_EQ(r.out, plain.out);
}

INSTANTIATE_TEST_SUITE_P(Cases, GpuMtp, ::testing::Values("dense", "moe"));

}  // namespace
}  // namespace specd::testing

