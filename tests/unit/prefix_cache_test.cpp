// The prefix store (cache/prefix_store.h) on the CPU reference, with the demo pair: a restored
// prefix is the state it was stored from (logits after it bitwise equal to the run that stored
// it), and an engine with the store gives every request exactly the ids it gives without one —
// hits at a stored chunk end, between them, on a whole prompt, on the prefix of a request still
// running, on a chat's next turn, under eviction, with 64 requests sharing a system prompt, and
// with every drafter.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "cache/prefix_store.h"
#include "engine_run.h"
#include "runtime/backend.h"
#include "speculative/engine.h"
#include "test_util.h"

namespace specd::testing {
namespace {

std::string DemoDir(const char* which) { return std::string(SPECD_SOURCE_DIR) + "/models/demo/" + which; }

struct Pair {
  std::unique_ptr<Backend> be = MakeCpuBackend();
  std::unique_ptr<Qwen35Model> target, draft;
  Pair() {
    target = std::move(Qwen35Model::Load(DemoDir("target"), be.get())).value();
    draft = std::move(Qwen35Model::Load(DemoDir("draft"), be.get())).value();
    EXPECT_TRUE(target->LoadMtpHead(DemoDir("target")).ok());  // the demo target's own MTP head
  }
};
Pair& P() {
  static Pair p;
  return p;
}

std::vector<int32_t> Ids(size_t n, uint64_t seed) { return DemoIds(n, seed); }

std::vector<int32_t> Cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// A restored prefix is exactly the stored state: the logits of the tokens after it equal, bit
// for bit, those of the slot that stored it going on with the same tokens — at a block boundary
// (48 = 3 x 16) and inside a block (37, whose partial block the store copied while its writer
// went on writing).
TEST(PrefixStore, RestoredStateGivesBitwiseEqualLogits) {
  Qwen35Model& m = *P().target;
  CacheOptions co;
  co.num_slots = 3;
  co.max_ctx = 256;
  co.kv_blocks = 64;
  auto cache = std::move(m.NewCache(co)).value();
  auto store = std::move(PrefixStore::Create(cache.get(), {4, 32})).value();
  const auto toks = Ids(90, 1);
  for (const int64_t cut : {48, 37}) {
    const int a = *cache->AllocSlot();
    RunForward(m, *cache, a, {toks.begin(), toks.begin() + cut});
    ASSERT_TRUE(store->Insert(toks, cut, a).ok());
    // The writer goes on (into the shared or copied block), and gives the reference logits.
    const auto want = RunForward(m, *cache, a, {toks.begin() + cut, toks.end()});
    const int b = *cache->AllocSlot();
    const PrefixStore::Hit hit = store->Lookup(toks, cut + 5);  // 37 lies on 48's path
    EXPECT_EQ(hit.length, cut);
    ASSERT_TRUE(store->Restore(hit, b).ok());
    EXPECT_EQ(cache->length(b), cut);
    const auto got = RunForward(m, *cache, b, {toks.begin() + cut, toks.end()});
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(got, want) << "cut " << cut;
    // The partial block is the store's own copy, and the slots' blocks return to the pool.
    cache->FreeSlot(a);
    cache->FreeSlot(b);
  }
  EXPECT_EQ(cache->kv_blocks_free(), 64 - store->stats().blocks_held);
  // Lookups find the longest stored prefix, never past max_len, and nothing on a different start.
  EXPECT_EQ(store->Lookup(toks, 47).length, 37);
  EXPECT_EQ(store->Lookup(toks, 36).length, 0);
  EXPECT_EQ(store->Lookup(Ids(90, 2), 89).length, 0);
  std::vector<int32_t> diverged = toks;
  diverged[40] += 1;
  EXPECT_EQ(store->Lookup(diverged, 89).length, 37);
  store.reset();
  EXPECT_EQ(cache->kv_blocks_free(), 64) << "the store let go of every block";
}

struct WaveRun {
  std::vector<std::vector<int32_t>> out;
  std::vector<int64_t> cached;
  std::vector<std::pair<int64_t, int64_t>> drafts;  // per request: draft tokens proposed, accepted
  PrefixStoreStats stats;
  // The MTP head cache's pool after the last wave (every request released): free and total blocks.
  int64_t head_free = -1, head_total = -1;
};

// Runs `waves` of requests on one engine (each wave to completion, so later waves can hit what
// earlier ones stored); `drafters`: comma-separated among ngram, draft, mtp (first = default),
// or none.
WaveRun RunWaves(const std::vector<std::vector<GenerationRequest>>& waves, int entries, const std::string& drafters = "none",
             int k = 0, int64_t store_tokens = 0) {
  EngineOptions o;
  o.max_seqs = 64;
  o.max_ctx = 512;
  o.default_k = k;
  o.prefill_chunk = 64;
  o.prefix_cache_entries = entries;
  o.prefix_cache_tokens = store_tokens;
  o.prefix_cache_interval = 32;
  std::vector<std::unique_ptr<Drafter>> ds;
  for (size_t a = 0; a < drafters.size();) {
    size_t b = drafters.find(',', a);
    if (b == std::string::npos) b = drafters.size();
    const std::string d = drafters.substr(a, b - a);
    if (d == "ngram") ds.push_back(MakeNgramDrafter());
    if (d == "draft") ds.push_back(std::move(MakeDraftModelDrafter(P().draft.get(), 4096, 64, 512, 16)).value());
    if (d == "mtp") ds.push_back(std::move(MakeMtpDrafter(P().target.get(), 64, 512, 16)).value());
    a = b + 1;
  }
  auto e = std::move(SpeculativeEngine::Create(P().target.get(), std::move(ds), o)).value();
  WaveRun r;
  for (const auto& wave : waves) {
    std::vector<int> ids;
    for (const auto& q : wave) ids.push_back(*e->Add(q));
    while (e->HasWork()) {
      const Status st = e->Step();
      EXPECT_TRUE(st.ok()) << st.ToString();
      if (!st.ok()) return r;
      if (PrefixStore* ps = e->prefix_store()) {
        EXPECT_LE(ps->stats().blocks_held, ps->options().max_blocks);
      }
    }
    for (int id : ids) {
      r.out.push_back(e->Generated(id));
      r.cached.push_back(e->CachedTokens(id));
      r.drafts.emplace_back(e->Stats(id).draft_tokens, e->Stats(id).accepted_tokens);
      e->Release(id);
    }
  }
  if (e->prefix_store()) r.stats = e->prefix_store()->stats();
  if (Drafter* m = e->drafter("mtp")) {
    r.head_free = m->state_cache()->kv_blocks_free();
    r.head_total = m->state_cache()->kv_blocks_total();
  }
  return r;
}

GenerationRequest Greedy(std::vector<int32_t> prompt, int n) { return Req(std::move(prompt), n); }
GenerationRequest Sampled(std::vector<int32_t> prompt, int n, uint64_t seed) {
  GenerationRequest r = Req(std::move(prompt), n);
  r.sampling.temperature = 0.8f;
  r.sampling.seed = seed;
  return r;
}

// Hits on a whole prompt seen before (stored with its last logits: nothing is computed, the first
// token comes from them), at a stored chunk end (96: the first wave's chunk was cut at that
// interval multiple), between stored prefixes (the shared 80 tokens end mid-chunk: the hit is at
// 64, the rest recomputed), and on a chat's next turn (prompt + reply + a new message: the hit is
// everything the first turn consumed). Greedy and sampled; every output equal to the engine
// without a store.
TEST(PrefixCacheEngine, HitsGiveTheUncachedIds) {
  const auto sys = Ids(80, 3), a = Ids(16, 4), b = Ids(23, 5);
  const std::vector<GenerationRequest> first = {Greedy(Cat(sys, a), 24), Sampled(Cat(sys, b), 24, 9)};
  std::vector<GenerationRequest> second = {
      Sampled(Cat(sys, b), 24, 9),                                     // first[1] again: whole, 103
      Sampled(Cat(sys, Ids(30, 6)), 24, 10),                           // shares 80: hit at 64
      Greedy(Cat(sys, a), 24),                                         // first[0] again: whole, 96
      Greedy(Cat(Cat(sys, {b.begin(), b.begin() + 16}), Ids(10, 17)), 24)};  // shares 96: the chunk end
  const WaveRun plain = RunWaves({first, second}, 0);
  // The next turn of the first chat: its prompt, its reply, a new message.
  second.push_back(Greedy(Cat(Cat(Cat(sys, a), plain.out[0]), Ids(9, 7)), 16));
  const WaveRun plain2 = RunWaves({first, second}, 0);
  const WaveRun cached = RunWaves({first, second}, 8);
  EXPECT_EQ(cached.out, plain2.out);
  EXPECT_EQ(cached.out[2], cached.out[1]) << "the same sampled request, the same draws";
  ASSERT_EQ(cached.cached.size(), 7u);
  EXPECT_EQ(cached.cached[0], 0);
  EXPECT_EQ(cached.cached[1], 0) << "admitted together with the first: nothing stored yet";
  EXPECT_EQ(cached.cached[2], 103) << "a whole prompt";
  EXPECT_EQ(cached.cached[3], 64);
  EXPECT_EQ(cached.cached[4], 96) << "a whole prompt";
  EXPECT_EQ(cached.cached[5], 96);
  EXPECT_EQ(cached.cached[6], 96 + 24 - 1) << "the next turn: prompt + reply, all but the pending token";
  // With the host token choice too (the whole-prompt hits choose their first token there anyway).
  EXPECT_GT(cached.stats.hit_tokens, 0);
}

// A request whose prompt extends one still decoding shares the running one's blocks, and both
// give their uncached ids.
TEST(PrefixCacheEngine, HitOnAPrefixOfARunningRequest) {
  const auto sys = Ids(70, 8);
  EngineOptions o;
  o.max_seqs = 4;
  o.max_ctx = 512;
  o.default_k = 0;
  o.prefill_chunk = 64;
  o.prefix_cache_entries = 4;
  o.prefix_cache_interval = 32;
  auto e = std::move(SpeculativeEngine::Create(P().target.get(), nullptr, o)).value();
  const int a = *e->Add(Greedy(sys, 40));
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(e->Step().ok());
  ASSERT_FALSE(e->Finished(a));
  const int b = *e->Add(Greedy(Cat(sys, Ids(5, 9)), 20));
  EXPECT_EQ(e->CachedTokens(b), 70) << "the running request's whole prompt was stored";
  while (e->HasWork()) ASSERT_TRUE(e->Step().ok());
  const WaveRun plain = RunWaves({{Greedy(sys, 40), Greedy(Cat(sys, Ids(5, 9)), 20)}}, 0);
  EXPECT_EQ(e->Generated(a), plain.out[0]);
  EXPECT_EQ(e->Generated(b), plain.out[1]);
}

// Two snapshots and a 12-block budget for 20 distinct prompts: entries are evicted (least
// recently used first), the budget is never exceeded (RunWaves checks after every step), and the
// ids are the uncached ones.
TEST(PrefixCacheEngine, EvictionUnderPressure) {
  std::vector<std::vector<GenerationRequest>> waves;
  for (int w = 0; w < 5; ++w) {
    std::vector<GenerationRequest> wave;
    for (int i = 0; i < 4; ++i) wave.push_back(Greedy(Ids(40 + 13 * i, 100 + w * 4 + i), 12));
    waves.push_back(wave);
  }
  const WaveRun first = RunWaves(waves, 0);
  // Then the next turn of the last wave's chats: the newest entries (their ends) are still there.
  std::vector<GenerationRequest> next;
  for (int i = 0; i < 4; ++i) next.push_back(Greedy(Cat(Cat(waves[4][i].prompt, first.out[16 + i]), Ids(5, 50 + i)), 12));
  waves.push_back(next);
  const WaveRun plain = RunWaves(waves, 0);
  const WaveRun cached = RunWaves(waves, 2, "none", 0, 12 * 16);
  EXPECT_EQ(cached.out, plain.out);
  EXPECT_GT(cached.stats.evictions, 10);
  EXPECT_LE(cached.stats.entries, 2);
  int next_hits = 0;
  for (size_t i = 20; i < 24; ++i) next_hits += cached.cached[i] > 0;
  EXPECT_GE(next_hits, 1);
}

// 64 concurrent requests sharing a 100-token system prompt (half greedy, half sampled): one
// engine step admits them all; later waves of the same hit the stored system prompt.
TEST(PrefixCacheEngine, SixtyFourRequestsSharingASystemPrompt) {
  const auto sys = Ids(100, 11);
  std::vector<GenerationRequest> wave;
  for (int i = 0; i < 64; ++i) {
    auto p = Cat(sys, Ids(3 + i % 7, 200 + i));
    wave.push_back(i % 2 ? Sampled(p, 10, 300 + i) : Greedy(p, 10));
  }
  const WaveRun plain = RunWaves({wave, wave}, 0);
  const WaveRun cached = RunWaves({wave, wave}, 160, "none", 0, 64 * 160);
  EXPECT_EQ(cached.out, plain.out);
  int64_t second_wave_hits = 0;
  for (size_t i = 64; i < 128; ++i) second_wave_hits += cached.cached[i] >= 96;
  EXPECT_EQ(second_wave_hits, 64);
}

// A system prompt of 90 tokens (no multiple of the 32-token interval or the 64-token chunk)
// shared by three users: the first stores at its chunk ends (64, 96, its end); the second finds 64
// and leaves the stored path at 90, so its prefill cuts a chunk there and stores the system
// prompt whole; the third finds all 90 tokens.
TEST(PrefixCacheEngine, ASharedSystemPromptIsStoredWhereUsersDiverge) {
  const auto sys = Ids(90, 31);
  const std::vector<std::vector<GenerationRequest>> waves = {
      {Greedy(Cat(sys, Ids(12, 32)), 16)}, {Greedy(Cat(sys, Ids(9, 33)), 16)}, {Greedy(Cat(sys, Ids(14, 34)), 16)}};
  const WaveRun plain = RunWaves(waves, 0);
  const WaveRun cached = RunWaves(waves, 8);
  EXPECT_EQ(cached.out, plain.out);
  EXPECT_EQ(cached.cached, (std::vector<int64_t>{0, 64, 90}));
}

// With speculation: the n-gram and draft-model drafters over cached prefixes (the draft model
// computes its own prefix: docs/prefix-cache.md) give plain greedy's ids.
TEST(PrefixCacheEngine, WithDrafters) {
  const auto sys = Ids(90, 12);
  const std::vector<GenerationRequest> w1 = {Greedy(Cat(sys, Ids(10, 13)), 32)};
  const std::vector<GenerationRequest> w2 = {Greedy(Cat(sys, Ids(12, 14)), 32), Greedy(Cat(sys, Ids(10, 13)), 32)};
  const WaveRun plain = RunWaves({w1, w2}, 0);
  for (const char* d : {"ngram", "draft"}) {
    const WaveRun cached = RunWaves({w1, w2}, 4, d, 3);
    EXPECT_EQ(cached.out, plain.out) << d;
    EXPECT_GT(cached.cached[1], 0) << d;
  }
}

// The MTP drafter over cached prefixes: an entry its requests store carries the head's part (its
// KV rows and the pending hidden row), so a request that starts from it drafts exactly as if the
// head had seen the prefix itself. Greedy and sampled, hits at a chunk end, on a whole prompt and
// on a chat's next turn: the ids equal plain decoding's, and every request's drafts and
// acceptances equal those of the same requests on an engine without a store (the drafts are a
// function of the head's state, so a wrong restored row would change them).
TEST(PrefixCacheEngine, MtpRequestsStartFromStoredPrefixes) {
  const auto sys = Ids(90, 21), a = Ids(10, 22), b = Ids(7, 23);
  GenerationRequest coupled = Sampled(Cat(sys, b), 24, 5);
  coupled.sampling.mode = SamplingMode::kCoupled;  // the same draws as plain sampling
  const std::vector<GenerationRequest> w1 = {Greedy(Cat(sys, a), 32), coupled};
  const WaveRun first = RunWaves({w1}, 0);
  const std::vector<GenerationRequest> w2 = {
      Greedy(Cat(sys, Ids(12, 24)), 32),                               // shares 90: hit at 64
      Greedy(Cat(sys, a), 32),                                         // whole, 100
      Greedy(Cat(Cat(Cat(sys, a), first.out[0]), Ids(9, 25)), 24),     // the next turn
      coupled};                                                        // whole, 97, sampled
  const WaveRun plain = RunWaves({w1, w2}, 0);
  const WaveRun uncached = RunWaves({w1, w2}, 0, "mtp", 3);
  const WaveRun cached = RunWaves({w1, w2}, 8, "mtp", 3);
  EXPECT_EQ(uncached.out, plain.out);
  EXPECT_EQ(cached.out, plain.out);
  EXPECT_EQ(cached.drafts, uncached.drafts) << "the head drafts as if it had seen the prefix";
  ASSERT_EQ(cached.cached.size(), 6u);
  EXPECT_EQ(cached.cached[2], 64);
  EXPECT_EQ(cached.cached[3], 100) << "a whole prompt";
  EXPECT_EQ(cached.cached[4], 100 + 32 - 1) << "the next turn: prompt + reply, all but the pending token";
  EXPECT_EQ(cached.cached[5], 97) << "a whole prompt";
  int64_t accepted = 0;
  for (size_t i = 2; i < 6; ++i) accepted += cached.drafts[i].second;
  EXPECT_GT(accepted, 20) << "the demo head drafts well from restored states";
}

// One store, several drafters: an entry an n-gram request stored has no head state, so an MTP
// request does not start from it (it computes the prefix, and its own store gives the entry the
// head's part); the next MTP request then does. The head cache's pool keeps no block beyond the
// states' budget once every request is gone, under eviction too.
TEST(PrefixCacheEngine, MtpBesideOtherDrafters) {
  const auto sys = Ids(80, 26);
  auto named = [](GenerationRequest r, const char* d) {
    r.drafter = d;
    return r;
  };
  const std::vector<std::vector<GenerationRequest>> waves = {
      {named(Greedy(Cat(sys, Ids(6, 27)), 20), "ngram")},
      {named(Greedy(Cat(sys, Ids(6, 28)), 20), "mtp")},
      {named(Greedy(Cat(sys, Ids(6, 29)), 20), "mtp"), named(Greedy(Cat(sys, Ids(6, 30)), 20), "ngram")}};
  std::vector<std::vector<GenerationRequest>> plain_waves = waves;
  for (auto& w : plain_waves) {
    for (auto& r : w) r.drafter = "none";
  }
  const WaveRun plain = RunWaves(plain_waves, 0, "mtp,ngram", 3);
  const WaveRun cached = RunWaves(waves, 8, "mtp,ngram", 3);
  EXPECT_EQ(cached.out, plain.out);
  ASSERT_EQ(cached.cached.size(), 4u);
  EXPECT_EQ(cached.cached[0], 0);
  EXPECT_EQ(cached.cached[1], 0) << "the n-gram request's entries carry no head state";
  // The MTP request left the n-gram one's path at 80 (the shared prompt's end), so it cut a chunk
  // there and stored an entry with the head's part.
  EXPECT_EQ(cached.cached[2], 80) << "the MTP request's store, at the shared prompt's end";
  EXPECT_EQ(cached.cached[3], 80);
  // 20 distinct MTP prompts through 2 entries of at most 12 blocks: evictions free the head's blocks.
  std::vector<std::vector<GenerationRequest>> many;
  for (int w = 0; w < 5; ++w) {
    std::vector<GenerationRequest> wave;
    for (int i = 0; i < 4; ++i) wave.push_back(named(Greedy(Ids(40 + 13 * i, 400 + w * 4 + i), 12), "mtp"));
    many.push_back(wave);
  }
  const WaveRun evicting = RunWaves(many, 2, "mtp", 3, 12 * 16);
  EXPECT_GT(evicting.stats.evictions, 10);
  ASSERT_GT(evicting.head_total, 0);
  EXPECT_LE(evicting.head_total - evicting.head_free, 12 + 2) << "only the stored states' blocks are held";
}

// One byte budget (--prefix-cache-bytes): the snapshots, the store's KV blocks and the MTP head's
// states, as allocated, fit in it and use most of it; a budget that holds no entry is refused;
// requests then run within it (the store's blocks never past its share) and give plain's ids.
TEST(PrefixCacheEngine, OneByteBudget) {
  const int64_t snapshot = PrefixSnapshotBytes(P().target->config(), P().be->act_dtype());
  ASSERT_GT(snapshot, 0);
  for (const int64_t budget : {6 * snapshot, 40 * snapshot}) {
    EngineOptions o;
    o.max_seqs = 8;
    o.max_ctx = 512;
    o.default_k = 3;
    o.prefill_chunk = 64;
    o.prefix_cache_entries = 1 << 16;
    o.prefix_cache_bytes = budget;
    o.prefix_cache_interval = 32;
    std::vector<std::unique_ptr<Drafter>> ds;
    ds.push_back(std::move(MakeMtpDrafter(P().target.get(), 8, 512, 16)).value());
    ds.push_back(MakeNgramDrafter());
    auto e = std::move(SpeculativeEngine::Create(P().target.get(), std::move(ds), o)).value();
    const int64_t reserved = e->prefix_cache_reserved_bytes();
    EXPECT_LE(reserved, budget);
    EXPECT_GT(reserved, budget * 8 / 10) << "the budget is used, not left idle";
    EXPECT_GE(e->options().prefix_cache_entries, 1);
    EXPECT_LT(e->options().prefix_cache_entries, budget / snapshot) << "entries leave room for KV rows";
    const auto sys = Ids(90, 35);
    std::vector<int> ids;
    for (int i = 0; i < 6; ++i) ids.push_back(*e->Add(Greedy(Cat(sys, Ids(5 + i, 36 + i)), 12)));
    while (e->HasWork()) {
      ASSERT_TRUE(e->Step().ok());
      EXPECT_LE(e->prefix_store()->stats().blocks_held, e->prefix_store()->options().max_blocks);
    }
  }
  EngineOptions o;
  o.max_ctx = 512;
  o.prefix_cache_entries = 8;
  o.prefix_cache_bytes = snapshot / 2;
  EXPECT_EQ(SpeculativeEngine::Create(P().target.get(), nullptr, o).status().code(), StatusCode::kInvalidArgument);
}

// A request may opt out: it neither looks up nor stores.
TEST(PrefixCacheEngine, PerRequestOptOut) {
  const auto sys = Ids(90, 15);
  GenerationRequest off = Greedy(Cat(sys, Ids(4, 16)), 8);
  off.prefix_cache = false;
  const WaveRun r = RunWaves({{Greedy(sys, 8)}, {off}, {off}}, 4);
  EXPECT_EQ(r.cached[1], 0);
  EXPECT_EQ(r.cached[2], 0);
  const WaveRun plain = RunWaves({{Greedy(sys, 8)}, {off}, {off}}, 0);
  EXPECT_EQ(r.out, plain.out);
}

}  // namespace
}  // namespace specd::testing
