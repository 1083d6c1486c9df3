// The memory plan (speculative/memory_plan.h, docs/memory.md): its exact parts equal what the
// loader and the engine allocate (weights of every fixture, caches of every kind, an engine with
// the MTP head, a draft model and the prefix cache), and a budget sizes the KV pool or stops
// the configuration with the numbers.
#include "speculative/memory_plan.h"

#include <gtest/gtest.h>

#include "cache/model_cache.h"
#include "checkpoint/presets.h"
#include "mtp_fixture.h"
#include "qwen35/weights.h"
#include "runtime/backend.h"
#include "speculative/drafter.h"
#include "test_util.h"

namespace specd::testing {
namespace {

TEST(MemoryPlan, WeightBytesAreWhatTheLoaderPuts) {
  auto be = MakeCpuBackend();
  for (const char* c : {"dense", "moe", "draft_small", "draft_near", "dense_multimodal_layout", "dense_fp8"}) {
    auto m = Qwen35Model::Load(ModelDir(c), be.get());
    ASSERT_TRUE(m.ok()) << c << ": " << m.status().ToString();
    EXPECT_EQ(WeightBytes((*m)->config(), DType::kF32), (*m)->weight_bytes()) << c;
    // The same tensors in bf16 (the CUDA backend): the fp32 parameters stay fp32.
    const int64_t fp32_params = 2 * int64_t{(*m)->config().linear_num_value_heads} * (*m)->config().num_gdn_layers();
    EXPECT_EQ(WeightBytes((*m)->config(), DType::kBF16), ((*m)->weight_bytes() - 4 * fp32_params) / 2 + 4 * fp32_params) << c;
    (*m)->RandomMtpHead(3);
    EXPECT_EQ(MtpWeightBytes((*m)->config(), DType::kF32), (*m)->mtp_head()->bytes) << c;
  }
  // A head loaded from a checkpoint (its fc split in column halves on the way).
  for (const char* c : {"dense", "moe"}) {
    const std::string dir = MtpCheckpoint(c);
    auto m = Qwen35Model::Load(dir, be.get());
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE((*m)->LoadMtpHead(dir).ok());
    EXPECT_EQ(MtpWeightBytes((*m)->config(), DType::kF32), (*m)->mtp_head()->bytes) << c;
    std::filesystem::remove_all(dir);
  }
}

TEST(MemoryPlan, CacheBytesAreWhatTheCacheAllocates) {
  auto be = MakeCpuBackend();
  for (const char* c : {"dense", "moe"}) {
    auto cfg = LoadModelConfig(ModelDir(c));
    ASSERT_TRUE(cfg.ok());
    for (int slots : {1, 3}) {
      for (bool ckpt : {false, true}) {
        for (int64_t blocks : {int64_t{0}, int64_t{5}}) {
          CacheOptions o;
          o.num_slots = slots;
          o.max_ctx = 100;
          o.kv_blocks = blocks;
          o.log_capacity = 5;
          o.checkpoints = ckpt;
          auto cache = ModelCache::Create(*cfg, be.get(), o);
          ASSERT_TRUE(cache.ok());
          const CacheBytes b = PlanCacheBytes(*cfg, DType::kF32, o);
          EXPECT_EQ(b.total(), (*cache)->allocated_bytes()) << c << " slots " << slots << " ckpt " << ckpt;
          EXPECT_GT(b.kv, 0);
          EXPECT_GT(b.gdn_state, 0);
          EXPECT_EQ(b.checkpoints > 0, ckpt);
        }
      }
    }
  }
}

// An engine serving the MTP head and a draft model with the prefix cache on: each exact part of
// the plan is what the engine, its caches and its drafters hold.
TEST(MemoryPlan, ExactPartsAreWhatTheEngineAllocates) {
  auto be = MakeCpuBackend();
  auto target = std::move(Qwen35Model::Load(ModelDir("dense"), be.get())).value();
  auto draft = std::move(Qwen35Model::Load(ModelDir("draft_small"), be.get())).value();
  target->RandomMtpHead(5);
  EngineOptions eo;
  eo.max_seqs = 3;
  eo.max_ctx = 200;
  eo.max_k = 4;
  eo.default_k = 3;
  eo.prefix_cache_entries = 7;
  eo.prefix_cache_tokens = 300;
  eo.prefix_cache_interval = 64;
  std::vector<std::unique_ptr<Drafter>> ds;
  for (const char* n : {"mtp", "draft"}) {
    auto d = MakeDrafter(n, target.get(), draft.get(), eo.max_seqs, eo.max_ctx, eo.max_k);
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    ds.push_back(std::move(d).value());
  }
  auto e = SpeculativeEngine::Create(target.get(), std::move(ds), eo);
  ASSERT_TRUE(e.ok()) << e.status().ToString();

  MemoryPlanInput in;
  in.target = target->config();
  in.act = DType::kF32;
  in.mtp = true;
  in.draft = draft->config();
  in.engine = eo;
  auto plan = PlanMemory(in);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  std::printf("%s\n", plan->Table().c_str());
  EXPECT_EQ(plan->bytes("target weights"), target->weight_bytes());
  EXPECT_EQ(plan->bytes("draft model weights"), draft->weight_bytes());
  EXPECT_EQ(plan->bytes("MTP head weights"), target->mtp_head()->bytes);
  EXPECT_EQ(plan->bytes("prefix cache"), (*e)->prefix_cache_reserved_bytes());
  const int64_t B = CacheOptions{}.kv_block_size;
  const int64_t store_kv = (300 + B - 1) / B * KvBytesPerToken(in.target, DType::kF32) * B;
  EXPECT_EQ(plan->bytes("KV pool (requests)") + plan->bytes("GDN state (slots)") + plan->bytes("verify log") +
                plan->bytes("block table, pad slot") + store_kv,
            (*e)->target_cache().allocated_bytes());
  EXPECT_EQ(plan->kv_tokens, (*e)->kv_blocks_total() * B);
  EXPECT_EQ(plan->bytes("draft model cache"), (*e)->drafter("draft")->state_cache()->allocated_bytes());
  // The head's cache also holds the prefix entries' rows (counted under "prefix cache") and a
  // pending hidden row per slot.
  Drafter* mtp = (*e)->drafter("mtp");
  const int64_t head_prefix = mtp->prefix_state_bytes() - 7 * in.target.hidden_size * 4;
  EXPECT_EQ(plan->bytes("MTP head cache"),
            mtp->state_cache()->allocated_bytes() - head_prefix + eo.max_seqs * in.target.hidden_size * 4);
  EXPECT_GT(plan->bytes("forward workspace"), 0);
  EXPECT_GT(plan->bytes("CUDA graph workspace"), 0);
}

MemoryPlanInput NineB() {
  MemoryPlanInput in;
  in.target = *ReleasedShapes("9B");
  in.act = DType::kBF16;
  in.engine.max_seqs = 16;
  in.engine.max_ctx = 32768;
  in.engine.max_k = 4;
  return in;
}

TEST(MemoryPlan, BudgetSizesTheKvPool) {
  MemoryPlanInput in = NineB();
  auto full = PlanMemory(in);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(full->kv_tokens, 16 * 32768);
  // Room for everything: the pool stays at every slot x max_ctx.
  auto roomy = PlanMemoryWithin(in, full->total() + 1000);
  ASSERT_TRUE(roomy.ok());
  EXPECT_EQ(roomy->kv_tokens, 16 * 32768);
  // 4 GB less: the pool shrinks by about that many bytes of KV, in whole blocks, and fits.
  const int64_t budget = full->total() - 4'000'000'000;
  auto tight = PlanMemoryWithin(in, budget);
  ASSERT_TRUE(tight.ok()) << tight.status().ToString();
  EXPECT_LE(tight->total(), budget);
  const int64_t per_block = KvBytesPerToken(in.target, DType::kBF16) * 16;
  EXPECT_GT(tight->total(), budget - per_block);
  EXPECT_EQ(tight->kv_tokens % 16, 0);
  EXPECT_LT(tight->kv_tokens, 16 * 32768);
  EXPECT_GE(tight->kv_tokens, 32768);
  // Not even one sequence of max_ctx: stop, with the numbers.
  auto none = PlanMemoryWithin(in, full->bytes("target weights") + 1'000'000'000);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(none.status().message().find("one sequence of max_context 32768 tokens needs"), std::string::npos)
      << none.status().message();
  EXPECT_NE(none.status().message().find("target weights"), std::string::npos);
  // An explicit pool is checked, not resized.
  in.engine.kv_cache_tokens = 16 * 32768;
  EXPECT_EQ(PlanMemoryWithin(in, budget).status().code(), StatusCode::kResourceExhausted);
  in.engine.kv_cache_tokens = 65536;
  auto kept = PlanMemoryWithin(in, budget);
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(kept->kv_tokens, 65536);
}

}  // namespace
}  // namespace specd::testing
