// Rollback exactness (docs/DESIGN-NOTES.md, "Verify and rollback"): after every verify step the slot's GDN conv
// windows, recurrent states and KV rows equal those of a reference slot fed the accepted tokens
// one at a time — for zero drafts, all rejected, all accepted and mixed steps; for the target and
// for the draft model's own slot.
#include <gtest/gtest.h>

#include "runtime/backend.h"
#include "speculative/engine.h"
#include "test_util.h"

namespace specd::testing {
namespace {

constexpr double kTol = 1e-5;

// Max relative L2 difference between two slots' states, over every layer.
double SlotStateDiff(Backend& be, ModelCache& a, int sa, ModelCache& b, int sb, int64_t len) {
  double worst = 0;
  auto slot_part = [&](const Tensor& t, int s) {
    auto all = be.DownloadF32(t);
    const int64_t per = t.numel() / t.dim(0);
    return std::vector<float>(all.begin() + s * per, all.begin() + (s + 1) * per);
  };
  for (size_t i = 0; i < a.gdn().size(); ++i) {
    worst = std::max(worst, RelL2(slot_part(a.gdn()[i].conv, sa), slot_part(b.gdn()[i].conv, sb)));
    worst = std::max(worst, RelL2(slot_part(a.gdn()[i].rec, sa), slot_part(b.gdn()[i].rec, sb)));
  }
  for (int i = 0; i < static_cast<int>(a.attn().size()); ++i) {
    for (bool values : {false, true}) {
      worst = std::max(worst, RelL2(a.SlotKvF32(i, values, sa, len), b.SlotKvF32(i, values, sb, len)));
    }
  }
  return worst;
}

TEST(Rollback, TargetVerifyCommitEqualsTokenByTokenForEveryAcceptancePattern) {
  auto be = MakeCpuBackend();
  auto model = std::move(Qwen35Model::Load(ModelDir("dense"), be.get())).value();
  auto refs = LoadRefs("dense");
  auto prompt = refs.Ids("prompt_ids");
  auto greedy = refs.Ids("greedy_ids");
  std::vector<int32_t> truth = prompt;
  truth.insert(truth.end(), greedy.begin(), greedy.end());
  CacheOptions co;
  co.num_slots = 2;
  co.max_ctx = 128;
  co.log_capacity = 9;
  auto cache = std::move(model->NewCache(co)).value();
  const int A = *cache->AllocSlot(), B = *cache->AllocSlot();
  RunForward(*model, *cache, A, prompt, false);
  RunForward(*model, *cache, B, prompt, false);
  int64_t n = static_cast<int64_t>(prompt.size());  // consumed; truth[n] is the pending t0
  int step = 0;
  int patterns_seen[4] = {0, 0, 0, 0};
  while (n + 7 < static_cast<int64_t>(truth.size())) {
    const int pattern = step++ % 4;
    std::vector<int32_t> drafts;
    int expect_accept = 0;
    auto wrong = [&](int64_t pos) { return (truth[pos] + 1) % 512; };
    if (pattern == 1) {  // all rejected
      for (int i = 1; i <= 3; ++i) drafts.push_back(wrong(n + i));
    } else if (pattern == 2) {  // all accepted
      for (int i = 1; i <= 4; ++i) drafts.push_back(truth[n + i]);
      expect_accept = 4;
    } else if (pattern == 3) {  // mixed: two right, then wrong
      drafts = {truth[n + 1], truth[n + 2], wrong(n + 3), truth[n + 4], truth[n + 5]};
      expect_accept = 2;
    }
    std::vector<int32_t> toks{truth[n]};
    toks.insert(toks.end(), drafts.begin(), drafts.end());
    ASSERT_TRUE(cache->BeginLog(A, false).ok());
    auto logits = RunForward(*model, *cache, A, toks, true, StateMode::kLog);
    EXPECT_EQ(cache->length(A), n);  // a verify changes nothing until the commit
    int a = 0;
    while (a < static_cast<int>(drafts.size()) && Argmax(logits.data() + a * 512, 512) == drafts[a]) ++a;
    EXPECT_EQ(a, expect_accept) << "step " << step;
    EXPECT_EQ(Argmax(logits.data() + a * 512, 512), truth[n + a + 1]);
    ASSERT_TRUE(cache->Commit(A, a + 1).ok());
    for (int i = 0; i <= a; ++i) RunForward(*model, *cache, B, {toks[i]}, false);
    ASSERT_EQ(cache->length(A), cache->length(B));
    const double diff = SlotStateDiff(*be, *cache, A, *cache, B, cache->length(A));
    EXPECT_LE(diff, kTol) << "pattern " << pattern << " at n=" << n;
    ++patterns_seen[pattern];
    n += a + 1;
  }
  for (int p = 0; p < 4; ++p) EXPECT_GE(patterns_seen[p], 2) << p;
}

TEST(Rollback, EngineTargetAndDraftSlotsEqualTokenByTokenReferenceAfterEveryStep) {
  auto be = MakeCpuBackend();
  auto target = std::move(Qwen35Model::Load(ModelDir("dense"), be.get())).value();
  auto draft = std::move(Qwen35Model::Load(ModelDir("draft_near"), be.get())).value();
  auto refs = LoadRefs("dense");
  auto prompt = refs.Ids("prompt_ids");
  EngineOptions o;
  o.max_seqs = 1;
  o.max_ctx = 128;
  o.default_k = 4;
  auto engine = std::move(SpeculativeEngine::Create(
      target.get(), std::move(MakeDraftModelDrafter(draft.get(), 512, 1, 128, 16)).value(), o)).value();
  GenerationRequest r;
  r.prompt = prompt;
  r.max_tokens = 40;
  r.ignore_eos = true;
  const int id = *engine->Add(r);
  CacheOptions co;
  co.max_ctx = 128;
  auto tref = std::move(target->NewCache(co)).value();
  auto dref = std::move(draft->NewCache(co)).value();
  const int ts = *tref->AllocSlot(), ds = *dref->AllocSlot();
  int steps = 0, partial = 0, full = 0, zero = 0;
  int64_t prev_accepted = 0, prev_drafts = 0;
  while (true) {
    ASSERT_TRUE(engine->Step().ok());
    if (engine->Finished(id)) break;
    ++steps;
    std::vector<int32_t> ctx = prompt;
    const auto& g = engine->Generated(id);
    ctx.insert(ctx.end(), g.begin(), g.end());
    // Target: consumed everything but the pending last token.
    const int tslot = engine->target_slot(id);
    ASSERT_EQ(engine->target_cache().length(tslot), static_cast<int64_t>(ctx.size()) - 1);
    while (tref->length(ts) < static_cast<int64_t>(ctx.size()) - 1) {
      RunForward(*target, *tref, ts, {ctx[tref->length(ts)]}, false);
    }
    EXPECT_LE(SlotStateDiff(*be, engine->target_cache(), tslot, *tref, ts, tref->length(ts)), kTol) << steps;
    // Draft: consumed a prefix of the context (accepted drafts only, never a rejected one).
    ModelCache* dc = engine->drafter()->state_cache();
    const int dslot = engine->drafter()->slot_of(id);
    const int64_t dl = dc->length(dslot);
    if (steps > 1) {  // the draft's slot is first filled by the first proposal
      ASSERT_LE(dl, static_cast<int64_t>(ctx.size()));
      while (dref->length(ds) < dl) RunForward(*draft, *dref, ds, {ctx[dref->length(ds)]}, false);
      EXPECT_LE(SlotStateDiff(*be, *dc, dslot, *dref, ds, dl), kTol) << steps;
    }
    const auto& st = engine->Stats(id);
    const int64_t acc = st.accepted_tokens - prev_accepted, dr = st.draft_tokens - prev_drafts;
    prev_accepted = st.accepted_tokens;
    prev_drafts = st.draft_tokens;
    if (dr > 0 && acc == dr) ++full;
    else if (dr > 0 && acc == 0) ++zero;
    else if (dr > 0) ++partial;
  }
  EXPECT_EQ(engine->Generated(id), refs.Ids("greedy_ids"));
  EXPECT_GT(full + zero + partial, 5);
  EXPECT_GT(zero, 0);
  EXPECT_GT(partial + full, 0);
}

}  // namespace
}  // namespace specd::testing
