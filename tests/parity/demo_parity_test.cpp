// The embedded demo pair (models/demo, trained by tools/train_demo.py): the engine reproduces the
// training script's transformers reference (fp32 forward of the saved bf16 weights), and greedy
// speculation with the demo draft equals plain greedy.
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace specd::testing
