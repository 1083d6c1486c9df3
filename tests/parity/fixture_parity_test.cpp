// Every fixture case against HF transformers' logits (docs/DESIGN-NOTES.md, numerics): uncached,
// prefill + ONE cached multi-token forward, token-by-token decode, the long prompt crossing GDN
// chunks, greedy ids, and the KV cache contents. Tolerance: relative L2 error per row <= 1e-4.
#include <gtest/gtest.h>

#include "runtime/backend.h"
#include "test_util.h"

namespace specd::testing {
namespace {

constexpr double kTol = 1e-4;

struct Case {
  const char* model;
  const char* refs;
};

class FixtureParity : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    backend_ = MakeCpuBackend();
    auto m = Qwen35Model::Load(ModelDir(GetParam().model), backend_.get());
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    model_ = std::move(m).value();
    refs_ = LoadRefs(GetParam().refs);
    ASSERT_NE(refs_.ck, nullptr);
    V_ = model_->config().vocab_size;
  }
  std::unique_ptr<ModelCache> NewCache(int64_t ctx = 256) {
    CacheOptions o;
    o.max_ctx = ctx;
    auto c = model_->NewCache(o);
    EXPECT_TRUE(c.ok());
    return std::move(c).value();
  }
  void Report(const char* what, double err) {
    RecordProperty(what, std::to_string(err));
    std::printf("  [%s] %s max row rel err = %.3g\n", GetParam().model, what, err);
  }
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Qwen35Model> model_;
  Refs refs_;
  int64_t V_ = 0;
};

TEST_P(FixtureParity, UncachedPromptLogits) {
  auto cache = NewCache();
  const int slot = *cache->AllocSlot();
  auto got = RunForward(*model_, *cache, slot, refs_.Ids("prompt_ids"));
  const double err = MaxRowRelErr(got, refs_.F("prompt_logits"), V_);
  Report("uncached", err);
  EXPECT_LE(err, kTol);
}

TEST_P(FixtureParity, PrefillThenOneCachedMultiTokenForward) {
  auto ids = refs_.Ids("prompt_ids");
  auto cache = NewCache();
  const int slot = *cache->AllocSlot();
  auto a = RunForward(*model_, *cache, slot, {ids.begin(), ids.begin() + 30});
  auto b = RunForward(*model_, *cache, slot, {ids.begin() + 30, ids.end()});
  EXPECT_EQ(cache->length(slot), 45);
  a.insert(a.end(), b.begin(), b.end());
  const double err = MaxRowRelErr(a, refs_.F("prompt_logits"), V_);
  Report("prefill30+cached15", err);
  EXPECT_LE(err, kTol);
}

TEST_P(FixtureParity, TokenByTokenDecode) {
  auto ids = refs_.Ids("prompt_ids");
  auto cache = NewCache();
  const int slot = *cache->AllocSlot();
  std::vector<float> all;
  for (int32_t t : ids) {
    auto r = RunForward(*model_, *cache, slot, {t});
    all.insert(all.end(), r.begin(), r.end());
  }
  const double err = MaxRowRelErr(all, refs_.F("prompt_logits"), V_);
  Report("token-by-token", err);
  EXPECT_LE(err, kTol);
}

TEST_P(FixtureParity, PrefillThenTokenByToken) {
  auto ids = refs_.Ids("prompt_ids");
  auto cache = NewCache();
  const int slot = *cache->AllocSlot();
  auto all = RunForward(*model_, *cache, slot, {ids.begin(), ids.begin() + 30});
  for (size_t t = 30; t < ids.size(); ++t) {
    auto r = RunForward(*model_, *cache, slot, {ids[t]});
    all.insert(all.end(), r.begin(), r.end());
  }
  const double err = MaxRowRelErr(all, refs_.F("prompt_logits"), V_);
  Report("prefill30+decode", err);
  EXPECT_LE(err, kTol);
}

TEST_P(FixtureParity, LongPromptAcrossChunks) {
  auto cache = NewCache();
  const int slot = *cache->AllocSlot();
  auto got = RunForward(*model_, *cache, slot, refs_.Ids("long_prompt_ids"));
  const double err = MaxRowRelErr(got, refs_.F("long_prompt_logits"), V_);
  Report("long150", err);
  EXPECT_LE(err, kTol);
}

TEST_P(FixtureParity, LongPromptInUnevenCachedChunks) {
  // Chunk boundaries that fall inside GDN chunks and below the conv width.
  auto ids = refs_.Ids("long_prompt_ids");
  auto cache = NewCache();
  const int slot = *cache->AllocSlot();
  std::vector<float> all;
  size_t pos = 0;
  for (size_t len : {2, 1, 70, 3, 64, 10}) {
    auto r = RunForward(*model_, *cache, slot, {ids.begin() + pos, ids.begin() + pos + len});
    all.insert(all.end(), r.begin(), r.end());
    pos += len;
  }
  ASSERT_EQ(pos, ids.size());
  const double err = MaxRowRelErr(all, refs_.F("long_prompt_logits"), V_);
  Report("long150-uneven-chunks", err);
  EXPECT_LE(err, kTol);
}

TEST_P(FixtureParity, GreedyIds) {
  auto ids = refs_.Ids("prompt_ids");
  auto want = refs_.Ids("greedy_ids");
  auto cache = NewCache();
  const int slot = *cache->AllocSlot();
  auto logits = RunForward(*model_, *cache, slot, ids, /*all_logits=*/false);
  std::vector<int32_t> got;
  for (size_t i = 0; i < want.size(); ++i) {
    const int next = Argmax(logits.data(), V_);
    got.push_back(next);
    logits = RunForward(*model_, *cache, slot, {next}, false);
  }
  EXPECT_EQ(got, want);
}

TEST_P(FixtureParity, KvCacheMatchesAfterPrefillAndPrompt) {
  const auto& cfg = model_->config();
  auto ids = refs_.Ids("prompt_ids");
  auto cache = NewCache(64);
  const int slot = *cache->AllocSlot();
  const int64_t D = cfg.head_dim;
  auto check = [&](const char* stage, int64_t T) {
    for (int i = 0; i < cfg.num_hidden_layers; ++i) {
      if (cfg.layer_types[i] != LayerType::kFullAttention) continue;
      for (const char* kv : {"keys", "values"}) {
        auto got = cache->SlotKvF32(cache->state_index(i), std::string(kv) == "values", slot, T);
        const double err = MaxRowRelErr(got, refs_.F(fmt::format("{}.layer{}.{}", stage, i, kv)), D);
        EXPECT_LE(err, kTol) << stage << " layer " << i << " " << kv;
      }
    }
  };
  RunForward(*model_, *cache, slot, {ids.begin(), ids.begin() + 30});
  check("after_prefill", 30);
  RunForward(*model_, *cache, slot, {ids.begin() + 30, ids.end()});
  check("after_prompt", 45);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, FixtureParity,
    ::testing::Values(Case{"dense", "dense"}, Case{"dense_bf16", "dense_bf16"}, Case{"moe", "moe"},
                      Case{"draft_near", "draft_near"}, Case{"draft_small", "draft_small"},
                      Case{"dense_multimodal_layout", "dense"},
                      // FP8 checkpoints made by transformers, against its own dequantized forward.
                      Case{"dense_fp8", "dense_fp8"}, Case{"moe_fp8", "moe_fp8"}),
    [](const auto& info) { return std::string(info.param.model); });

// The routing hooks the GPU parity test relies on: replaying a recorded routing reproduces the
// forward bit for bit, and a different forced routing changes it (so the hook is really used).
TEST(MoeRoutingHooks, ReplayReproducesAndForcingChanges) {
  auto be = MakeCpuBackend();
  auto m = std::move(Qwen35Model::Load(ModelDir("moe"), be.get())).value();
  auto ids = LoadRefs("moe").Ids("prompt_ids");
  const int E = m->config().num_experts;
  auto run = [&] {
    CacheOptions o;
    o.max_ctx = 256;
    auto cache = std::move(m->NewCache(o)).value();
    return RunForward(*m, *cache, *cache->AllocSlot(), ids);
  };
  std::vector<std::vector<int32_t>> rec;
  be->SetMoeRoutingHooks(&rec, nullptr);
  const auto plain = run();
  ASSERT_EQ(static_cast<int>(rec.size()), m->config().num_hidden_layers);
  for (const auto& r : rec) ASSERT_EQ(r.size(), ids.size() * m->config().num_experts_per_tok);
  be->SetMoeRoutingHooks(nullptr, &rec);
  EXPECT_EQ(run(), plain);
  auto shifted = rec;
  for (auto& r : shifted) {
    for (auto& e : r) e = (e + 1) % E;
  }
  be->SetMoeRoutingHooks(nullptr, &shifted);
  const auto other = run();
  be->SetMoeRoutingHooks(nullptr, nullptr);
  EXPECT_GT(MaxRowRelErr(other, plain, m->config().vocab_size), 1e-2);
}

}  // namespace
}  // namespace specd::testing
