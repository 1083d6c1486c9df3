// The prefix store on the CUDA backend (cache/prefix_store.h uses only CopyRows and the block
// table, which the CUDA backend has): a restored prefix is the stored state, bit for bit, and an
// engine with the store gives the ids it gives without one. One sequence per forward and
// 16-token prompt chunks keep every forward on the row-invariant (<= 16 rows) projections, so the
// cached and the uncached runs may differ only if the store's state differed.
#include <memory>
#include <string>
#include <vector>

#include "cache/prefix_store.h"
#include "engine_run.h"
#include "gpu_test_util.h"
#include "speculative/engine.h"

namespace specd::testing {
namespace {

std::unique_ptr<Qwen35Model> DemoTarget() {
  auto m = Qwen35Model::Load(std::string(SPECD_SOURCE_DIR) + "/models/demo/target", Gpu());
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? std::move(m).value() : nullptr;
}

std::vector<int32_t> Ids(size_t n, uint64_t seed) { return DemoIds(n, seed); }

TEST(GpuPrefixStore, RestoredStateGivesBitwiseEqualLogits) {
  SPECD_REQUIRE_GPU();
  auto m = DemoTarget();
  ASSERT_NE(m, nullptr);
  CacheOptions co;
  co.num_slots = 3;
  co.max_ctx = 256;
  co.kv_blocks = 64;
  auto cache = std::move(m->NewCache(co)).value();
  auto store = std::move(PrefixStore::Create(cache.get(), {4, 32})).value();
  const auto toks = Ids(60, 1);
  for (const int64_t cut : {48, 37}) {
    const int a = *cache->AllocSlot();
    for (int64_t p = 0; p < cut; p += 16) RunForward(*m, *cache, a, {toks.begin() + p, toks.begin() + std::min<int64_t>(p + 16, cut)});
    ASSERT_TRUE(store->Insert(toks, cut, a).ok());
    const auto want = RunForward(*m, *cache, a, {toks.begin() + cut, toks.begin() + cut + 12});
    const int b = *cache->AllocSlot();
    const PrefixStore::Hit hit = store->Lookup(toks, cut + 5);
    ASSERT_EQ(hit.length, cut);
    ASSERT_TRUE(store->Restore(hit, b).ok());
    const auto got = RunForward(*m, *cache, b, {toks.begin() + cut, toks.begin() + cut + 12});
    EXPECT_EQ(got, want) << "cut " << cut;
    cache->FreeSlot(a);
    cache->FreeSlot(b);
  }
  store.reset();
  EXPECT_EQ(cache->kv_blocks_free(), 64);
}

struct OneAtATime {
  std::vector<std::vector<int32_t>> out;
  std::vector<int64_t> cached;
  std::vector<std::pair<int64_t, int64_t>> drafts;  // per request: proposed, accepted
};

// The requests one at a time (every forward has at most 16 rows) on one engine with `entries`
// prefix entries (0: no store); drafter "none" or "mtp" (the demo target's head), k drafts.
OneAtATime RunOneAtATime(Qwen35Model* m, const std::vector<GenerationRequest>& reqs, int entries,
                         const std::string& drafter, int k) {
  EngineOptions o;
  o.max_seqs = 2;
  o.max_ctx = 512;
  o.default_k = k;
  o.prefill_chunk = 16;
  o.prefix_cache_entries = entries;
  o.prefix_cache_interval = 16;
  std::unique_ptr<Drafter> d;
  if (drafter == "mtp") d = std::move(MakeMtpDrafter(m, 2, 512, 16)).value();
  auto e = std::move(SpeculativeEngine::Create(m, std::move(d), o)).value();
  OneAtATime r;
  for (const auto& q : reqs) {
    const int id = *e->Add(q);
    while (e->HasWork()) EXPECT_TRUE(e->Step().ok());
    r.out.push_back(e->Generated(id));
    r.cached.push_back(e->CachedTokens(id));
    r.drafts.emplace_back(e->Stats(id).draft_tokens, e->Stats(id).accepted_tokens);
    e->Release(id);
  }
  return r;
}

std::vector<int32_t> Cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(GpuPrefixStore, EngineIdsEqualWithAndWithoutTheStore) {
  SPECD_REQUIRE_GPU();
  auto m = DemoTarget();
  ASSERT_NE(m, nullptr);
  const auto sys = Ids(70, 3);
  std::vector<GenerationRequest> reqs = {Req(Cat(sys, Ids(9, 4)), 20), Req(Cat(sys, Ids(12, 5)), 20),
                                         Req(Cat(sys, Ids(9, 4)), 20)};
  reqs[1].sampling.temperature = 0.8f;
  reqs[1].sampling.seed = 5;
  const auto plain = RunOneAtATime(m.get(), reqs, 0, "none", 0);
  const auto with = RunOneAtATime(m.get(), reqs, 8, "none", 0);
  EXPECT_EQ(with.out, plain.out);
  EXPECT_EQ(with.cached, (std::vector<int64_t>{0, 64, 79})) << "a shared chunk end, then a whole prompt";
}

// MTP requests start from stored prefixes with the head's own part restored (its KV rows and
// pending hidden row): the ids, and each request's drafts and acceptances, equal the run without
// a store (greedy drafts are a function of the head's state).
TEST(GpuPrefixStore, MtpDraftsEqualWithAndWithoutTheStore) {
  SPECD_REQUIRE_GPU();
  auto m = DemoTarget();
  ASSERT_NE(m, nullptr);
  ASSERT_TRUE(m->LoadMtpHead(std::string(SPECD_SOURCE_DIR) + "/models/demo/target").ok());
  const auto sys = Ids(70, 6);
  std::vector<GenerationRequest> reqs = {Req(Cat(sys, Ids(9, 7)), 24), Req(Cat(sys, Ids(12, 8)), 24),
                                         Req(Cat(sys, Ids(9, 7)), 24)};
  const auto plain = RunOneAtATime(m.get(), reqs, 0, "none", 0);
  reqs.push_back(Req(Cat(Cat(reqs[0].prompt, plain.out[0]), Ids(5, 9)), 16));  // the next turn
  const auto plain2 = RunOneAtATime(m.get(), reqs, 0, "none", 0);
  const auto uncached = RunOneAtATime(m.get(), reqs, 0, "mtp", 3);
  const auto with = RunOneAtATime(m.get(), reqs, 8, "mtp", 3);
  EXPECT_EQ(uncached.out, plain2.out);
  EXPECT_EQ(with.out, plain2.out);
  EXPECT_EQ(with.drafts, uncached.drafts) << "the head drafts as if it had seen the prefix";
  EXPECT_EQ(with.cached, (std::vector<int64_t>{0, 64, 79, 79 + 24 - 1}));
  int64_t accepted = 0;
  for (const auto& [p, a] : with.drafts) accepted += a;
  EXPECT_GT(accepted, 0);
}

}  // namespace
}  // namespace specd::testing
