// The speculative engine's invariants (docs/DESIGN-NOTES.md): greedy speculation == plain greedy for every
// drafter and k, single and batched; stop handling; adaptive k; bad inputs.
#include <gtest/gtest.h>

#include "runtime/backend.h"
#include "speculative/engine.h"
#include "test_util.h"

namespace specd::testing {
namespace {

struct Models {
  std::unique_ptr<Backend> be = MakeCpuBackend();
  std::unique_ptr<Qwen35Model> target, near, small;
  Models() {
    target = std::move(Qwen35Model::Load(ModelDir("dense"), be.get())).value();
    near = std::move(Qwen35Model::Load(ModelDir("draft_near"), be.get())).value();
    small = std::move(Qwen35Model::Load(ModelDir("draft_small"), be.get())).value();
  }
};

Models& M() {
  static Models m;
  return m;
}

std::unique_ptr<Drafter> MakeDrafter(const std::string& kind, int max_seqs, int max_k) {
  if (kind == "ngram") return MakeNgramDrafter();
  if (kind == "none") return nullptr;
  Qwen35Model* d = kind == "near" ? M().near.get() : M().small.get();
  return std::move(MakeDraftModelDrafter(d, 512, max_seqs, 512, max_k)).value();
}

std::unique_ptr<SpeculativeEngine> MakeEngine(const std::string& drafter, int k, int max_seqs = 8) {
  EngineOptions o;
  o.max_seqs = max_seqs;
  o.max_ctx = 512;
  o.default_k = k;
  auto e = SpeculativeEngine::Create(M().target.get(), MakeDrafter(drafter, max_seqs, 16), o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return std::move(e).value();
}

// Plain greedy continuation by token-by-token forwards and argmax: independent of the engine.
std::vector<int32_t> ReferenceGreedy(const std::vector<int32_t>& prompt, int n) {
  CacheOptions co;
  co.max_ctx = 512;
  auto cache = std::move(M().target->NewCache(co)).value();
  const int slot = *cache->AllocSlot();
  auto logits = RunForward(*M().target, *cache, slot, prompt, false);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(Argmax(logits.data(), 512));
    logits = RunForward(*M().target, *cache, slot, {out.back()}, false);
  }
  return out;
}

std::vector<int32_t> RunToEnd(SpeculativeEngine& e, int id) {
  while (!e.Finished(id)) {
    auto st = e.Step();
    EXPECT_TRUE(st.ok()) << st.ToString();
    if (!st.ok()) break;
  }
  return e.Generated(id);
}

GenerationRequest Greedy(std::vector<int32_t> prompt, int n) {
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.max_tokens = n;
  r.ignore_eos = true;
  return r;
}

class GreedySpec : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(GreedySpec, SingleSequenceEqualsFixtureGreedyIds) {
  const auto& [drafter, k] = GetParam();
  auto refs = LoadRefs("dense");
  auto want = refs.Ids("greedy_ids");
  auto e = MakeEngine(drafter, k);
  const int id = *e->Add(Greedy(refs.Ids("prompt_ids"), static_cast<int>(want.size())));
  EXPECT_EQ(RunToEnd(*e, id), want);
  const auto& st = e->Stats(id);
  EXPECT_LE(st.accepted_tokens, st.draft_tokens);
  EXPECT_LE(st.draft_tokens, st.verify_steps * k);
  EXPECT_EQ(e->Reason(id), FinishReason::kLength);
}

TEST_P(GreedySpec, BatchedSequencesOfDifferentLengthsEqualPlainGreedy) {
  const auto& [drafter, k] = GetParam();
  auto refs = LoadRefs("dense");
  auto p = refs.Ids("prompt_ids");
  auto lp = refs.Ids("long_prompt_ids");
  // A repetitive prompt gives the n-gram drafter real matches.
  std::vector<int32_t> rep;
  for (int i = 0; i < 6; ++i) rep.insert(rep.end(), p.begin(), p.begin() + 7);
  const std::vector<std::vector<int32_t>> prompts = {p, {lp.begin(), lp.begin() + 5}, {lp.begin(), lp.begin() + 97}, rep, {p[3]}};
  const std::vector<int> lens = {24, 17, 9, 30, 12};
  auto e = MakeEngine(drafter, k);
  std::vector<int> ids;
  for (size_t i = 0; i < prompts.size(); ++i) ids.push_back(*e->Add(Greedy(prompts[i], lens[i])));
  while (e->HasWork()) ASSERT_TRUE(e->Step().ok());
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(e->Generated(ids[i]), ReferenceGreedy(prompts[i], lens[i])) << "sequence " << i;
  }
  EXPECT_EQ(e->slots_in_use(), 0);
}

INSTANTIATE_TEST_SUITE_P(DraftersAndK, GreedySpec,
                         ::testing::Combine(::testing::Values("near", "small", "ngram"),
                                            ::testing::Values(1, 2, 3, 4, 6, 8)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_k" + std::to_string(std::get<1>(info.param));
                         });

TEST(SpeculativeEngine, PrefillTokenBudgetPerStepKeepsOutputsExact) {
  // Prompts longer than the per-step budget are fed over several steps, several sequences
  // share the budget, and decoding sequences keep going meanwhile.
  auto refs = LoadRefs("dense");
  auto p = refs.Ids("prompt_ids"), lp = refs.Ids("long_prompt_ids");
  EngineOptions o;
  o.max_ctx = 512;
  o.default_k = 3;
  o.prefill_chunk = 5;
  o.max_prefill_tokens = 7;
  auto e = std::move(SpeculativeEngine::Create(M().target.get(), MakeDrafter("near", 8, 16), o)).value();
  const std::vector<std::vector<int32_t>> prompts = {p, {lp.begin(), lp.begin() + 23}, {p[0]}};
  std::vector<int> ids;
  for (const auto& pr : prompts) ids.push_back(*e->Add(Greedy(pr, 10)));
  // Prompt tokens consumed per step, summed over sequences, from the target slots' lengths.
  std::vector<int64_t> seen(prompts.size(), 0);
  int64_t max_step = 0;
  while (e->HasWork()) {
    ASSERT_TRUE(e->Step().ok());
    int64_t step_prompt = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const int64_t P = static_cast<int64_t>(prompts[i].size());
      const int64_t len = e->Finished(ids[i]) ? P : e->target_cache().length(e->target_slot(ids[i]));
      const int64_t now = std::min(len, P);
      step_prompt += now - seen[i];
      seen[i] = now;
    }
    EXPECT_LE(step_prompt, 7);
    max_step = std::max(max_step, step_prompt);
  }
  EXPECT_EQ(max_step, 7);  // the budget was the binding limit (chunks alone allow 5 + 5 + 1)
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(e->Generated(ids[i]), ReferenceGreedy(prompts[i], 10)) << i;
  o.max_prefill_tokens = 0;
  EXPECT_EQ(SpeculativeEngine::Create(M().target.get(), nullptr, o).status().code(), StatusCode::kInvalidArgument);
}

TEST(SpeculativeEngine, NearDraftIsOftenAcceptedSmallDraftRarely) {
  auto refs = LoadRefs("dense");
  auto run = [&](const std::string& d) {
    auto e = MakeEngine(d, 4);
    const int id = *e->Add(Greedy(refs.Ids("prompt_ids"), 40));
    RunToEnd(*e, id);
    return e->Stats(id).acceptance_rate();
  };
  const double near = run("near"), small = run("small");
  EXPECT_GT(near, 0.15);
  EXPECT_LT(small, near);
}

TEST(SpeculativeEngine, StopTokenEosAndLength) {
  auto refs = LoadRefs("dense");
  auto greedy = refs.Ids("greedy_ids");
  auto prompt = refs.Ids("prompt_ids");
  {  // a stop id ends the output at its first occurrence (included)
    auto e = MakeEngine("near", 4);
    auto r = Greedy(prompt, 40);
    r.stop_ids = {greedy[5]};
    const int id = *e->Add(r);
    auto got = RunToEnd(*e, id);
    const auto first = std::find(greedy.begin(), greedy.end(), greedy[5]) - greedy.begin();
    EXPECT_EQ(got, std::vector<int32_t>(greedy.begin(), greedy.begin() + first + 1));
    EXPECT_EQ(e->Reason(id), FinishReason::kStop);
  }
  {  // eos from the engine's eos ids; ignore_eos runs to max_tokens
    EngineOptions o;
    o.max_ctx = 512;
    o.default_k = 3;
    o.eos_ids = {greedy[3]};
    auto e = std::move(SpeculativeEngine::Create(M().target.get(), MakeDrafter("near", 8, 16), o)).value();
    auto r = Greedy(prompt, 40);
    r.ignore_eos = false;
    const int id = *e->Add(r);
    auto got = RunToEnd(*e, id);
    const auto first = std::find(greedy.begin(), greedy.end(), greedy[3]) - greedy.begin();
    EXPECT_EQ(got, std::vector<int32_t>(greedy.begin(), greedy.begin() + first + 1));
    EXPECT_EQ(e->Reason(id), FinishReason::kEos);
    r.ignore_eos = true;
    r.max_tokens = 11;
    const int id2 = *e->Add(r);
    EXPECT_EQ(RunToEnd(*e, id2), std::vector<int32_t>(greedy.begin(), greedy.begin() + 11));
    EXPECT_EQ(e->Reason(id2), FinishReason::kLength);
  }
  {  // min_tokens keeps the stop id out of the first min_tokens outputs
    auto e = MakeEngine("near", 4);
    auto r = Greedy(prompt, 30);
    r.stop_ids = {greedy[2]};
    r.min_tokens = 12;
    const int id = *e->Add(r);
    auto got = RunToEnd(*e, id);
    ASSERT_GE(got.size(), 12u);
    for (size_t i = 0; i < 12; ++i) EXPECT_NE(got[i], greedy[2]) << i;
    EXPECT_EQ(std::vector<int32_t>(got.begin(), got.begin() + 2), std::vector<int32_t>(greedy.begin(), greedy.begin() + 2));
  }
}

TEST(SpeculativeEngine, AdaptiveKBacksOffWithAPoorDrafterAndStaysExact) {
  auto refs = LoadRefs("dense");
  auto e = MakeEngine("small", 8);
  auto r = Greedy(refs.Ids("prompt_ids"), 40);
  r.adaptive_k = true;
  const int id = *e->Add(r);
  EXPECT_EQ(RunToEnd(*e, id), refs.Ids("greedy_ids"));
  const auto& st = e->Stats(id);
  // Fixed k = 8 would draft 8 per step; the adaptive choice drops toward plain decoding.
  EXPECT_LT(static_cast<double>(st.draft_tokens) / static_cast<double>(st.verify_steps), 2.0);
}

// A KV pool smaller than max_seqs x max_ctx: a request is admitted only when its rows (prompt +
// max_tokens + k + 1) fit beside the admitted ones, otherwise Add says Unavailable and changes
// nothing; finished requests return their blocks, which the next request reuses; a request that
// could never fit is InvalidArgument. Outputs over the reused, scattered blocks equal plain greedy.
TEST(SpeculativeEngine, KvPoolAdmissionWaitsForBlocksAndReusesThem) {
  EngineOptions o;
  o.max_seqs = 4;
  o.max_ctx = 512;
  o.default_k = 3;
  o.kv_cache_tokens = 128;  // 8 blocks of 16 rows
  auto made = SpeculativeEngine::Create(M().target.get(), MakeDrafter("near", 4, 16), o);
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  SpeculativeEngine& e = **made;
  EXPECT_EQ(e.kv_blocks_total(), 8);
  auto ids = LoadRefs("dense").Ids("prompt_ids");
  auto req = [&](size_t from, int max_tokens) {
    GenerationRequest r;
    r.prompt.assign(ids.begin() + static_cast<std::ptrdiff_t>(from), ids.begin() + static_cast<std::ptrdiff_t>(from) + 20);
    r.max_tokens = max_tokens;
    r.ignore_eos = true;
    return r;
  };
  // 20 + 40 + 3 + 1 = 64 rows: 4 blocks each.
  auto a = e.Add(req(0, 40));
  auto b = e.Add(req(5, 40));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(e.kv_blocks_reserved(), 8);
  auto c = e.Add(req(10, 40));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable) << c.status().ToString();
  EXPECT_EQ(e.kv_blocks_reserved(), 8);
  EXPECT_EQ(e.slots_in_use(), 2);
  auto huge = e.Add(req(0, 200));  // 224 rows: more than the whole pool
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), StatusCode::kInvalidArgument) << huge.status().ToString();
  const auto out_a = RunToEnd(e, *a);
  const auto out_b = RunToEnd(e, *b);
  EXPECT_EQ(e.kv_blocks_reserved(), 0);
  e.Release(*a);
  e.Release(*b);
  // Now it fits, on blocks the first two used.
  c = e.Add(req(10, 40));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  const auto out_c = RunToEnd(e, *c);
  auto prompt = [&](size_t from) { return std::vector<int32_t>(ids.begin() + static_cast<std::ptrdiff_t>(from), ids.begin() + static_cast<std::ptrdiff_t>(from) + 20); };
  EXPECT_EQ(out_a, ReferenceGreedy(prompt(0), 40));
  EXPECT_EQ(out_b, ReferenceGreedy(prompt(5), 40));
  EXPECT_EQ(out_c, ReferenceGreedy(prompt(10), 40));
  EXPECT_EQ(e.target_cache().kv_blocks_free(), 8);
  o.kv_cache_tokens = -1;
  EXPECT_FALSE(SpeculativeEngine::Create(M().target.get(), nullptr, o).ok());
}

TEST(SpeculativeEngine, BadInputsGiveClearErrors) {
  auto e = MakeEngine("ngram", 4);
  auto r = Greedy({}, 4);
  auto s = e->Add(r);
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("empty prompt"), std::string::npos);
  r = Greedy({1, 2, 600}, 4);
  EXPECT_EQ(e->Add(r).status().code(), StatusCode::kInvalidArgument);
  r = Greedy({1, 2, 3}, 4);
  r.k = 17;
  s = e->Add(r);
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("k must be"), std::string::npos);
  r.k = 2;
  r.sampling.temperature = -1.f;
  EXPECT_EQ(e->Add(r).status().code(), StatusCode::kInvalidArgument);
  r.sampling.temperature = 1.f;
  r.sampling.top_p = 0.f;
  EXPECT_EQ(e->Add(r).status().code(), StatusCode::kInvalidArgument);
  r = Greedy({1, 2, 3}, 600);
  s = e->Add(r);
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("context"), std::string::npos);
  EXPECT_EQ(e->slots_in_use(), 0);  // nothing leaked by the rejected requests

  EngineOptions o;
  o.default_k = 20;
  EXPECT_EQ(SpeculativeEngine::Create(M().target.get(), nullptr, o).status().code(), StatusCode::kInvalidArgument);

  // A draft model with another vocabulary is refused.
  ModelConfig c = M().small->config();
  c.vocab_size = 300;
  auto other = Qwen35Model::Random(c, M().be.get(), 7);
  auto d = MakeDraftModelDrafter(other.get(), 512, 1, 64, 4);
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(d.status().message().find("vocab"), std::string::npos);
}

// A drafter with a bug: its proposal throws.
class ThrowingDrafter final : public Drafter {
 public:
  std::string name() const override { return "throwing"; }
  Status AddSequence(int) override { return Status::Ok(); }
  void RemoveSequence(int) override {}
  Status Propose(const std::vector<DraftRequest>&, std::vector<DraftProposal>&) override {
    throw std::logic_error("drafter bug");
  }
  Status Accept(const std::vector<DraftOutcome>&) override { return Status::Ok(); }
};

// The error model (util/status.h): whatever is thrown under a step comes back from Step() as a
// status (kInternal), never as an exception across the engine boundary.
TEST(SpeculativeEngine, ExceptionUnderAStepIsAnInternalStatus) {
  EngineOptions o;
  o.max_seqs = 1;
  o.max_ctx = 128;
  o.default_k = 2;
  auto e = std::move(SpeculativeEngine::Create(M().target.get(), std::make_unique<ThrowingDrafter>(), o)).value();
  GenerationRequest r;
  r.prompt = {1, 2, 3};
  r.max_tokens = 8;
  ASSERT_TRUE(e->Add(r).ok());
  Status st = Status::Ok();
  for (int i = 0; i < 4 && st.ok() && e->HasWork(); ++i) {
    EXPECT_NO_THROW(st = e->Step());
  }
  EXPECT_EQ(st.code(), StatusCode::kInternal) << st.ToString();
  EXPECT_NE(st.message().find("drafter bug"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace specd::testing
