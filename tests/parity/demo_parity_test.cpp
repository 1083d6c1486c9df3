// The embedded demo pair (models/demo, trained by tools/train_demo.py): the engine reproduces the
// training script's transformers reference (fp32 forward of the saved bf16 weights), and greedy
// speculation with the demo draft and with the target's MTP head equals plain greedy.
#include <gtest/gtest.h>

#include <map>

#include "engine_run.h"
#include "runtime/backend.h"
#include "speculative/engine.h"
#include "test_util.h"

namespace specd::testing {
namespace {

std::string DemoDir(const char* which) { return std::string(SPECD_SOURCE_DIR) + "/models/demo/" + which; }

struct Demo {
  std::unique_ptr<Backend> be = MakeCpuBackend();
  std::unique_ptr<Qwen35Model> target, draft;
  Refs refs;
  Demo() {
    target = std::move(Qwen35Model::Load(DemoDir("target"), be.get())).value();
    draft = std::move(Qwen35Model::Load(DemoDir("draft"), be.get())).value();
    auto ck = Checkpoint::Open(std::string(SPECD_FIXTURES) + "/demo/refs.safetensors");
    EXPECT_TRUE(ck.ok()) << ck.status().ToString();
    refs.ck = std::move(ck).value();
  }
};
Demo& D() {
  static Demo d;
  return d;
}

TEST(DemoPair, LogitsMatchTransformers) {
  const int64_t V = D().target->config().vocab_size;
  CacheOptions o;
  o.max_ctx = 512;
  auto cache = std::move(D().target->NewCache(o)).value();
  const int slot = *cache->AllocSlot();
  auto ids = D().refs.Ids("prompt_ids");
  auto got = RunForward(*D().target, *cache, slot, ids);
  const double err = MaxRowRelErr(got, D().refs.F("prompt_logits"), V);
  std::printf("  [demo target] max row rel err vs transformers = %.3g\n", err);
  EXPECT_LE(err, 1e-4);
}

TEST(DemoPair, GreedyIdsMatchTransformers) {
  const int64_t V = D().target->config().vocab_size;
  CacheOptions o;
  o.max_ctx = 512;
  auto cache = std::move(D().target->NewCache(o)).value();
  const int slot = *cache->AllocSlot();
  auto want = D().refs.Ids("greedy_ids");
  auto logits = RunForward(*D().target, *cache, slot, D().refs.Ids("prompt_ids"), false);
  std::vector<int32_t> got;
  for (size_t i = 0; i < want.size(); ++i) {
    got.push_back(Argmax(logits.data(), V));
    logits = RunForward(*D().target, *cache, slot, {got.back()}, false);
  }
  EXPECT_EQ(got, want);
}

TEST(DemoPair, GreedySpeculationWithTheDemoDraftEqualsPlainGreedy) {
  auto prompt = D().refs.Ids("prompt_ids");
  auto run = [&](int k, bool draft, SpeculativeStats* stats) {
    EngineOptions o;
    o.max_seqs = 1;
    o.max_ctx = 512;
    o.default_k = k;
    std::unique_ptr<Drafter> d;
    if (draft) d = std::move(MakeDraftModelDrafter(D().draft.get(), D().target->config().vocab_size, 1, 512, 16)).value();
    auto e = std::move(SpeculativeEngine::Create(D().target.get(), std::move(d), o)).value();
    GenerationRequest r;
    r.prompt = prompt;
    r.max_tokens = 48;
    r.ignore_eos = true;
    const int id = *e->Add(r);
    while (!e->Finished(id)) EXPECT_TRUE(e->Step().ok());
    if (stats) *stats = e->Stats(id);
    return e->Generated(id);
  };
  const auto plain = run(0, false, nullptr);
  auto want = D().refs.Ids("greedy_ids");
  EXPECT_EQ(std::vector<int32_t>(plain.begin(), plain.begin() + want.size()), want);
  for (int k : {1, 2, 4, 8}) {
    SpeculativeStats st;
    EXPECT_EQ(run(k, true, &st), plain) << "k=" << k;
    // A trained draft agrees with its target a good part of the time (the random fixture
    // drafts do not): the figures the README quotes come from here and bench/demo_bench.py.
    EXPECT_GT(st.acceptance_rate(), 0.15) << "k=" << k;
  }
}

// The demo target's own MTP head (trained with it, tools/train_demo.py): greedy speculation with it
// gives plain greedy's tokens for k = 1..4, and its drafts are kept a good part of the time.
TEST(DemoPair, GreedySpeculationWithTheDemoMtpHeadEqualsPlainGreedy) {
  auto be = MakeCpuBackend();
  const std::string dir = DemoDir("target");
  auto m = std::move(Qwen35Model::Load(dir, be.get())).value();
  const Status st = m->LoadMtpHead(dir);
  ASSERT_TRUE(st.ok()) << st.ToString();
  const auto prompt = D().refs.Ids("prompt_ids");
  std::vector<GenerationRequest> reqs = {Req(prompt, 48), Req({prompt.begin(), prompt.begin() + 9}, 48)};
  const EngineRun plain = RunEngine(m.get(), nullptr, true, "none", 0, reqs, {}, 16);
  auto want = D().refs.Ids("greedy_ids");
  EXPECT_EQ(std::vector<int32_t>(plain.out[0].begin(), plain.out[0].begin() + want.size()), want);
  for (int k = 1; k <= 4; ++k) {
    const EngineRun mtp = RunEngine(m.get(), nullptr, true, "mtp", k, reqs, {}, 16);
    EXPECT_EQ(mtp.out, plain.out) << "k=" << k;
    const double rate = static_cast<double>(mtp.accepted) / static_cast<double>(mtp.proposed);
    std::printf("[demo mtp k=%d] acceptance %.3f (%lld / %lld)\n", k, rate, static_cast<long long>(mtp.accepted),
                static_cast<long long>(mtp.proposed));
    EXPECT_GT(rate, 0.2) << "k=" << k;
  }
}


// One engine serving the demo's three drafters side by side, each request naming one (or "none",
// or "" for the default): what the daemon runs with `--drafter mtp,draft,ngram`. Greedy and
// coupled-sampled output equal plain decoding's for every request, each drafter drafts only for
// its own requests, and a drafter the engine does not hold is refused by name.
TEST(DemoPair, MixedDraftersInOneEngineEqualPlainDecoding) {
  auto be = MakeCpuBackend();
  const std::string dir = DemoDir("target");
  auto m = std::move(Qwen35Model::Load(dir, be.get())).value();
  ASSERT_TRUE(m->LoadMtpHead(dir).ok());
  const int64_t V = m->config().vocab_size;
  const auto prompt = D().refs.Ids("prompt_ids");
  const char* names[] = {"", "mtp", "draft", "ngram", "none"};
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 15; ++i) {
    const size_t len = 4 + (static_cast<size_t>(i) * 7) % (prompt.size() - 4);
    GenerationRequest r = Req({prompt.begin(), prompt.begin() + static_cast<std::ptrdiff_t>(len)}, 24 + i % 5);
    r.drafter = names[i % 5];
    if (i >= 10) {  // the last five sample, coupled to plain sampling's draws
      r.sampling.temperature = 0.8f;
      r.sampling.seed = 100 + i;
      r.sampling.mode = SamplingMode::kCoupled;
    }
    reqs.push_back(std::move(r));
  }
  std::vector<GenerationRequest> plain_reqs = reqs;
  for (auto& r : plain_reqs) r.drafter.clear();
  const EngineRun plain = RunEngine(m.get(), nullptr, true, "none", 0, plain_reqs, {}, 16);
  for (bool device_choice : {true, false}) {
    std::vector<std::unique_ptr<Drafter>> ds;
    ds.push_back(std::move(MakeMtpDrafter(m.get(), 16, 512, 16)).value());
    ds.push_back(std::move(MakeDraftModelDrafter(D().draft.get(), V, 16, 512, 16)).value());
    ds.push_back(MakeNgramDrafter());
    EngineOptions o;
    o.max_seqs = 16;
    o.max_ctx = 512;
    o.default_k = 3;
    o.prefill_chunk = 16;
    o.device_token_choice = device_choice;
    auto e = std::move(SpeculativeEngine::Create(m.get(), std::move(ds), o)).value();
    EXPECT_EQ(e->drafter_names(), (std::vector<std::string>{"mtp", "draft", "ngram"}));
    GenerationRequest bad = reqs[0];
    bad.drafter = "eagle";
    const auto refused = e->Add(bad);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(refused.status().message().find("'eagle'"), std::string::npos) << refused.status().ToString();
    std::vector<int> ids;
    for (const auto& r : reqs) ids.push_back(*e->Add(r));
    // Each drafter holds exactly its own requests' slots ("" = the default, mtp).
    EXPECT_EQ(e->drafter("mtp")->state_cache()->slots_in_use(), 6);
    EXPECT_EQ(e->drafter("draft")->state_cache()->slots_in_use(), 3);
    while (e->HasWork()) ASSERT_TRUE(e->Step().ok());
    std::map<std::string, int64_t> drafted, kept;
    for (size_t i = 0; i < reqs.size(); ++i) {
      EXPECT_EQ(e->Generated(ids[i]), plain.out[i]) << "request " << i << " drafter '" << reqs[i].drafter << "'";
      drafted[reqs[i].drafter] += e->Stats(ids[i]).draft_tokens;
      kept[reqs[i].drafter] += e->Stats(ids[i]).accepted_tokens;
    }
    EXPECT_EQ(drafted["none"], 0);
    for (const char* n : {"", "mtp", "draft", "ngram"}) {
      EXPECT_GT(drafted[n], 0) << "drafter '" << n << "'";
      EXPECT_GT(kept[n], 0) << "drafter '" << n << "'";
    }
    EXPECT_EQ(e->drafter("mtp")->state_cache()->slots_in_use(), 0);
    EXPECT_EQ(e->drafter("draft")->state_cache()->slots_in_use(), 0);
  }
}

}  // namespace
}  // namespace specd::testing
