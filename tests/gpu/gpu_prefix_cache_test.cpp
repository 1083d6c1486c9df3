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

TEST(GpuPrefixStore, EngineIdsEqualWithAndWithoutTheStore) {
  SPECD_REQUIRE_GPU();
  auto m = DemoTarget();
  ASSERT_NE(m, nullptr);
  const auto sys = Ids(70, 3);
  auto cat = [](std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  std::vector<GenerationRequest> reqs = {Req(cat(sys, Ids(9, 4)), 20), Req(cat(sys, Ids(12, 5)), 20),
                                         Req(cat(sys, Ids(9, 4)), 20)};
  reqs[1].sampling.temperature = 0.8f;
  reqs[1].sampling.seed = 5;
  auto run = [&](int entries, std::vector<int64_t>* cached) {
    EngineOptions o;
    o.max_seqs = 2;
    o.max_ctx = 512;
    o.default_k = 0;
    o.prefill_chunk = 16;
    o.prefix_cache_entries = entries;
    o.prefix_cache_interval = 16;
    auto e = std::move(SpeculativeEngine::Create(m.get(), nullptr, o)).value();
    std::vector<std::vector<int32_t>> out;
    for (const auto& r : reqs) {  // one at a time: every forward has at most 16 rows
      const int id = *e->Add(r);
      while (e->HasWork()) EXPECT_TRUE(e->Step().ok());
      out.push_back(e->Generated(id));
      if (cached) cached->push_back(e->CachedTokens(id));
      e->Release(id);
    }
    return out;
  };
  std::vector<int64_t> cached;
  const auto plain = run(0, nullptr);
  const auto with = run(8, &cached);
  EXPECT_EQ(with, plain);
  EXPECT_EQ(cached, (std::vector<int64_t>{0, 64, 79})) << "a shared chunk end, then a whole prompt";
}

}  // namespace
}  // namespace specd::testing
