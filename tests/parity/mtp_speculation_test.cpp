// Speculation with the MTP head (engine/speculative/mtp_drafter.cpp) on the MTP fixtures, CPU:
// the drafter's drafts against the reference head's (transformers' logits, and the head chained by
// hand), greedy and coupled output equal to plain decoding for k = 1..4 with chunked prefill and
// several sequences, and the head's cache equal to a sequential run's after every step.
#include <gtest/gtest.h>

#include <fstream>

#include "engine_run.h"
#include "mtp_fixture.h"
#include "mtp_head_check.h"
#include "mtp_oracle.h"
#include "speculative/draft_vocab.h"

namespace specd::testing {
namespace {

struct Loaded {
  std::unique_ptr<Backend> be;
  std::unique_ptr<Qwen35Model> model;
};

Loaded LoadWithHead(const std::string& base) {
  Loaded l;
  l.be = MakeCpuBackend();
  const std::string dir = MtpCheckpoint(base);
  auto m = Qwen35Model::Load(dir, l.be.get());
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  if (!m.ok()) return l;
  l.model = std::move(*m);
  const Status st = l.model->LoadMtpHead(dir);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return l;
}

class MtpSpeculation : public ::testing::TestWithParam<std::string> {};

// The drafter on its own: shown the target's rows of a prompt, it drafts d1 from the head's row
// of (h_{n-2}, x_{n-1}) — transformers' logits say which token that is — and d2, d3 from the head
// re-applied to its own output, as a hand-chained head computes them.
TEST_P(MtpSpeculation, DraftsAreTheReferenceHeads) {
  Loaded l = LoadWithHead(GetParam());
  ASSERT_TRUE(l.model);
  Qwen35Model& m = *l.model;
  const Refs refs = LoadRefs(GetParam() + "_mtp");
  const std::vector<int32_t> ctx = refs.Ids("prompt_ids");
  const std::vector<float> ref_logits = refs.F("mtp_logits");
  const int64_t n = static_cast<int64_t>(ctx.size()), V = m.config().vocab_size;

  auto d = MakeMtpDrafter(&m, 2, 512, 8);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  Drafter& dr = **d;
  ASSERT_TRUE(dr.reads_target_hidden());
  ASSERT_TRUE(dr.AddSequence(3).ok());
  const std::vector<int32_t> consumed(ctx.begin(), ctx.end() - 1);  // x_{n-1} pending, as in decode
  const Tensor hidden = TargetHidden(m, consumed);
  ASSERT_TRUE(dr.ObserveTarget(hidden, {TargetRows{3, 0, n - 1, 0, &ctx}}).ok());
  EXPECT_EQ(dr.state_cache()->length(dr.slot_of(3)), n - 2) << "the head keeps one real row pending";

  SamplingParams greedy;
  std::vector<DraftProposal> props;
  const Status st = dr.Propose({DraftRequest{3, &ctx, 3, &greedy}}, props);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ASSERT_EQ(props.size(), 1u);
  ASSERT_EQ(props[0].tokens.size(), 3u);
  EXPECT_EQ(props[0].tokens[0], Argmax(ref_logits.data() + (n - 2) * V, V)) << "transformers' head row n-2";

  // By hand: the head over every pair of the prompt, then two chained steps.
  CacheOptions o;
  o.max_ctx = 512;
  auto mc = m.NewMtpCache(o);
  ASSERT_TRUE(mc.ok());
  const int slot = *(*mc)->AllocSlot();
  auto step = [&](std::vector<int32_t> toks, const Tensor& h) {
    auto r = m.MtpForward({SeqInput{slot, std::move(toks), StateMode::kUpdate, false}}, h, **mc);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return std::move(*r);
  };
  auto out = step({ctx.begin() + 1, ctx.end()}, hidden);
  std::vector<int32_t> want;
  for (int j = 0; j < 3; ++j) {
    const std::vector<float> row = l.be->DownloadF32(out.logits.logits);
    want.push_back(Argmax(row.data(), V));
    if (j < 2) out = step({want.back()}, out.hidden);
  }
  EXPECT_EQ(props[0].tokens, want);

  // Rolled back to the real rows only: the chained rows go.
  ASSERT_TRUE(dr.Accept({DraftOutcome{3, 3, 2}}).ok());
  EXPECT_EQ(dr.state_cache()->length(dr.slot_of(3)), n - 1);
}

// A step whose drafts were all dropped before the verify (the engine reports proposed = 0) still
// rolls the head back: the slot leaves its speculation step at the real rows, and the next
// target rows go in.
TEST_P(MtpSpeculation, AcceptRollsBackWhenNoDraftWasVerified) {
  Loaded l = LoadWithHead(GetParam());
  ASSERT_TRUE(l.model);
  Qwen35Model& m = *l.model;
  const std::vector<int32_t> ctx = LoadRefs(GetParam() + "_mtp").Ids("prompt_ids");
  const int64_t n = static_cast<int64_t>(ctx.size());
  auto d = std::move(MakeMtpDrafter(&m, 1, 512, 8)).value();
  ASSERT_TRUE(d->AddSequence(0).ok());
  const std::vector<int32_t> consumed(ctx.begin(), ctx.end() - 1);
  ASSERT_TRUE(d->ObserveTarget(TargetHidden(m, consumed), {TargetRows{0, 0, n - 1, 0, &ctx}}).ok());
  SamplingParams greedy;
  std::vector<DraftProposal> props;
  ASSERT_TRUE(d->Propose({DraftRequest{0, &ctx, 3, &greedy}}, props).ok());
  ASSERT_TRUE(d->Accept({DraftOutcome{0, 0, 0}}).ok());
  ModelCache& head = *d->state_cache();
  EXPECT_FALSE(head.logging(d->slot_of(0)));
  EXPECT_EQ(head.length(d->slot_of(0)), n - 1);
  // The plain decode step of t0: its hidden row and the emitted token.
  std::vector<int32_t> next = ctx;
  next.push_back(ctx[0]);
  const Tensor h = TargetHidden(m, {ctx.begin(), ctx.end()});
  const Status st = d->ObserveTarget(h.Rows(n - 1, 1), {TargetRows{0, n - 1, 1, 0, &next}});
  EXPECT_TRUE(st.ok()) << st.ToString();
}

std::vector<GenerationRequest> Requests(const std::vector<int32_t>& prompt, int n) {
  // Three prompts: the fixture's, a short prefix (one chunk) and a single token.
  return {Req(prompt, n), Req({prompt.begin(), prompt.begin() + 6}, n), Req({prompt[3]}, n)};
}

// Greedy speculation with MTP gives plain greedy's tokens, whatever k, with prompts prefilled in
// chunks of 7 (the head's cache is filled across chunks) and three sequences batched together.
// The fixture heads are random, so their drafts are all rejected; the oracle run has the verifier
// keep most drafts, so the head also takes in verifies that keep several tokens.
TEST_P(MtpSpeculation, GreedyEqualsPlainGreedy) {
  Loaded l = LoadWithHead(GetParam());
  ASSERT_TRUE(l.model);
  const std::vector<int32_t> prompt = LoadRefs(GetParam() + "_mtp").Ids("prompt_ids");
  const auto reqs = Requests(prompt, 40);
  const EngineRun plain = RunEngine(l.model.get(), nullptr, true, "none", 0, reqs, {}, 7);
  for (int k = 1; k <= 4; ++k) {
    for (bool device : {true, false}) {
      const EngineRun mtp = RunEngine(l.model.get(), nullptr, device, "mtp", k, reqs, {}, 7);
      EXPECT_EQ(mtp.out, plain.out) << "k " << k << (device ? " device" : " host") << " token choice";
      EXPECT_GT(mtp.proposed, 0) << "k " << k;
      std::printf("[mtp %s k=%d %s] acceptance %lld / %lld\n", GetParam().c_str(), k, device ? "device" : "host",
                  static_cast<long long>(mtp.accepted), static_cast<long long>(mtp.proposed));
    }
  }
  for (int k = 1; k <= 4; ++k) {
    const EngineRun o = RunEngineWith(l.model.get(), MakeOracleMtp(l.model.get(), References(reqs, plain), 0.7, 8),
                                      true, k, reqs, {}, 7);
    EXPECT_EQ(o.out, plain.out) << "oracle k " << k;
    EXPECT_GT(o.accepted, o.proposed / 3) << "oracle k " << k;
  }
  // Adaptive k changes how many drafts, never the tokens.
  std::vector<GenerationRequest> adaptive = reqs;
  for (auto& r : adaptive) r.adaptive_k = true;
  EXPECT_EQ(RunEngine(l.model.get(), nullptr, true, "mtp", 4, adaptive, {}, 7).out, plain.out);
}

// Sampling: coupled mode with MTP gives exactly plain sampling's tokens (the same noise per
// position), and rejection mode is repeatable under a seed.
TEST_P(MtpSpeculation, SamplingModes) {
  Loaded l = LoadWithHead(GetParam());
  ASSERT_TRUE(l.model);
  const std::vector<int32_t> prompt = LoadRefs(GetParam() + "_mtp").Ids("prompt_ids");
  auto reqs = Requests(prompt, 32);
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].sampling.temperature = 0.8f;
    reqs[i].sampling.top_p = 0.95f;
    reqs[i].sampling.seed = 11 + i;
    reqs[i].sampling.mode = SamplingMode::kCoupled;
  }
  const EngineRun plain = RunEngine(l.model.get(), nullptr, true, "none", 0, reqs, {}, 7);
  EXPECT_EQ(RunEngine(l.model.get(), nullptr, true, "mtp", 3, reqs, {}, 7).out, plain.out);
  for (auto& r : reqs) r.sampling.mode = SamplingMode::kRejection;
  const EngineRun a = RunEngine(l.model.get(), nullptr, true, "mtp", 3, reqs, {}, 7);
  const EngineRun b = RunEngine(l.model.get(), nullptr, false, "mtp", 3, reqs, {}, 7);
  EXPECT_EQ(a.out, b.out) << "device and host token choice draw alike";
  for (const auto& o : a.out) EXPECT_EQ(o.size(), 32u);
}

// After every step, each running sequence's head cache holds exactly the rows a sequential run
// gives: the head over (h_t, x_{t+1}) for every position but the last consumed one, h from the
// target run over the sequence's tokens in one go.
TEST_P(MtpSpeculation, HeadCacheEqualsASequentialRunAfterEveryStep) {
  Loaded l = LoadWithHead(GetParam());
  ASSERT_TRUE(l.model);
  Qwen35Model& m = *l.model;
  const std::vector<int32_t> prompt = LoadRefs(GetParam() + "_mtp").Ids("prompt_ids");
  // The oracle keeps drafts most of the time, so verifies that keep 1..4 tokens all occur.
  const auto reqs = Requests(prompt, 24);
  const EngineRun plain = RunEngine(&m, nullptr, true, "none", 0, reqs, {}, 9);
  EngineOptions o;
  o.max_seqs = 4;
  o.max_ctx = 512;
  o.default_k = 3;
  o.prefill_chunk = 9;
  const HeadCacheRun r = RunCheckingHeadCache(m, MakeOracleMtp(&m, References(reqs, plain), 0.7, 4), reqs, o, 1e-4);
  EXPECT_GT(r.checked, 10);
  EXPECT_GT(r.kept, 20) << "verifies kept drafts";
  EXPECT_EQ(r.out, plain.out);
}

// A reduced draft vocabulary (here the even ids): d1 is the argmax of transformers' head logits
// over those ids only, every draft is in the set, a rejection row's q lives on the set (zero
// elsewhere, sums to 1), and greedy output still equals plain greedy.
TEST_P(MtpSpeculation, ReducedDraftVocabulary) {
  Loaded l = LoadWithHead(GetParam());
  ASSERT_TRUE(l.model);
  Qwen35Model& m = *l.model;
  const int64_t V = m.config().vocab_size;
  std::vector<int32_t> even;
  for (int32_t i = 0; i < V; i += 2) even.push_back(i);
  ASSERT_TRUE(m.SetMtpVocab(even).ok());
  const Refs refs = LoadRefs(GetParam() + "_mtp");
  const std::vector<int32_t> ctx = refs.Ids("prompt_ids");
  const std::vector<float> ref_logits = refs.F("mtp_logits");
  const int64_t n = static_cast<int64_t>(ctx.size());
  int32_t want = 0;
  for (int32_t i = 2; i < V; i += 2) {
    if (ref_logits[(n - 2) * V + i] > ref_logits[(n - 2) * V + want]) want = i;
  }
  for (bool sampled : {false, true}) {
    auto d = std::move(MakeMtpDrafter(&m, 2, 512, 8)).value();
    ASSERT_TRUE(d->AddSequence(1).ok());
    const std::vector<int32_t> consumed(ctx.begin(), ctx.end() - 1);
    ASSERT_TRUE(d->ObserveTarget(TargetHidden(m, consumed), {TargetRows{1, 0, n - 1, 0, &ctx}}).ok());
    SamplingParams sp;
    if (sampled) {
      sp.temperature = 1.f;
      sp.seed = 3;
    }
    std::vector<DraftProposal> props;
    ASSERT_TRUE(d->Propose({DraftRequest{1, &ctx, 3, &sp}}, props).ok());
    ASSERT_EQ(props[0].tokens.size(), 3u);
    if (!sampled) {
      EXPECT_EQ(props[0].tokens[0], want) << "argmax of transformers' logits over the set";
    }
    for (int32_t t : props[0].tokens) EXPECT_EQ(t % 2, 0) << t;
    if (sampled) {
      ASSERT_EQ(props[0].probs.size(), 3u);
      for (const auto& q : props[0].probs) {
        ASSERT_EQ(static_cast<int64_t>(q.size()), V);
        double sum = 0, odd = 0;
        for (int64_t i = 0; i < V; ++i) (i % 2 ? odd : sum) += q[i];
        EXPECT_NEAR(sum, 1.0, 1e-4);
        EXPECT_EQ(odd, 0.0);
      }
    }
  }
  const std::vector<int32_t> prompt = refs.Ids("prompt_ids");
  const auto reqs = Requests(prompt, 32);
  const EngineRun plain = RunEngine(&m, nullptr, true, "none", 0, reqs, {}, 7);
  EXPECT_EQ(RunEngine(&m, nullptr, true, "mtp", 3, reqs, {}, 7).out, plain.out);
  EXPECT_EQ(m.SetMtpVocab({3, 1}).code(), StatusCode::kInvalidArgument) << "not sorted";
  EXPECT_EQ(m.SetMtpVocab({1, static_cast<int32_t>(V)}).code(), StatusCode::kInvalidArgument) << "out of range";
  ASSERT_TRUE(m.SetMtpVocab({}).ok());
}

TEST(DraftVocab, FileAndTopK) {
  EXPECT_EQ(TopDraftVocab({5, 1, 5, 0, 3}, 3), (std::vector<int32_t>{0, 2, 4}));
  EXPECT_EQ(TopDraftVocab({1, 1, 1}, 2), (std::vector<int32_t>{0, 1})) << "ties: the smaller id";
  EXPECT_EQ(TopDraftVocab({1, 2}, 9).size(), 2u);
  const std::string path = ::testing::TempDir() + "/specd_draft_vocab.json";
  auto load = [&](const std::string& text) {
    std::ofstream(path) << text;
    return LoadDraftVocab(path, 10);
  };
  auto ok = load(R"({"ids": [7, 2, 5], "vocab_size": 10})");
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(*ok, (std::vector<int32_t>{2, 5, 7}));
  for (const char* bad : {"[1, 2]", R"({"ids": []})", R"({"ids": [1, 1]})", R"({"ids": [10]})", R"({"ids": [-1]})",
                          R"({"ids": ["a"]})", "{not json"}) {
    EXPECT_EQ(load(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(LoadDraftVocab(path + ".missing", 10).status().code(), StatusCode::kNotFound);
}

TEST(MtpDrafterErrors, NeedsTheHead) {
  auto be = MakeCpuBackend();
  auto m = Qwen35Model::Load(ModelDir("dense"), be.get());
  ASSERT_TRUE(m.ok());
  auto d = MakeMtpDrafter(m->get(), 1, 64, 4);
  EXPECT_EQ(d.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(d.status().message().find("MTP head"), std::string::npos) << d.status().ToString();
  EXPECT_EQ(MakeDrafter("mtp", m->get(), nullptr, 1, 64, 4).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(CheckDrafterName("mtp").ok());
}

INSTANTIATE_TEST_SUITE_P(Cases, MtpSpeculation, ::testing::Values("dense", "moe"));

}  // namespace
}  // namespace specd::testing
