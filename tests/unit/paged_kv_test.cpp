// The paged KV cache (docs/DESIGN-NOTES.md, "Paged KV cache"): blocks are taken from the pool as
// a slot grows and returned when it is freed, reset or a verify's tail is rejected; where a slot's
// blocks lie in the pool does not change its logits; an exhausted pool is a clean error.
#include <gtest/gtest.h>

#include <algorithm>

#include "runtime/backend.h"
#include "test_util.h"

namespace specd::testing {
namespace {

class PagedKv : public ::testing::Test {
 protected:
  void SetUp() override {
    be_ = MakeCpuBackend();
    auto m = Qwen35Model::Load(ModelDir("dense"), be_.get());
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    model_ = std::move(m).value();
    auto r = LoadRefs("dense");
    prompt_ = r.Ids("prompt_ids");
    ASSERT_GE(prompt_.size(), 20u);
  }
  // Small blocks, so the fixture's short sequences span many of them.
  std::unique_ptr<ModelCache> Cache(int slots, int64_t blocks = 0, int block = 4, int64_t ctx = 64) {
    CacheOptions o;
    o.num_slots = slots;
    o.max_ctx = ctx;
    o.kv_block_size = block;
    o.kv_blocks = blocks;
    o.log_capacity = 9;
    auto c = model_->NewCache(o);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(c).value() : nullptr;
  }
  std::vector<int32_t> Tok(size_t from, size_t n) const {
    return {prompt_.begin() + static_cast<int64_t>(from), prompt_.begin() + static_cast<int64_t>(from + n)};
  }
  // Everything a slot holds, as host floats: GDN windows and states, and its KV rows.
  std::vector<float> SlotState(ModelCache& c, int slot) {
    std::vector<float> out;
    for (auto& g : c.gdn()) {
      for (const Tensor* t : {&g.conv, &g.rec}) {
        auto all = be_->DownloadF32(*t);
        const int64_t per = t->numel() / t->dim(0);
        out.insert(out.end(), all.begin() + slot * per, all.begin() + (slot + 1) * per);
      }
    }
    for (int i = 0; i < static_cast<int>(c.attn().size()); ++i) {
      for (bool values : {false, true}) {
        auto kv = c.SlotKvF32(i, values, slot, c.length(slot));
        out.insert(out.end(), kv.begin(), kv.end());
      }
    }
    return out;
  }
  std::unique_ptr<Backend> be_;
  std::unique_ptr<Qwen35Model> model_;
  std::vector<int32_t> prompt_;
};

TEST_F(PagedKv, DefaultPoolCoversEverySlotAtMaxCtx) {
  CacheOptions o;
  o.num_slots = 3;
  o.max_ctx = 50;
  auto c = std::move(model_->NewCache(o)).value();
  EXPECT_EQ(c->kv_block_size(), 16);
  EXPECT_EQ(c->kv_blocks_max_per_slot(), 4);  // ceil(50 / 16)
  EXPECT_EQ(c->kv_blocks_total(), 12);
  EXPECT_EQ(c->kv_blocks_free(), 12);
  // dense: one attention layer, 2 KV heads of 64 dims, fp32 on the CPU.
  EXPECT_EQ(c->kv_block_bytes(), 2 * 2 * 16 * 64 * 4);
  o.kv_block_size = 0;
  EXPECT_EQ(model_->NewCache(o).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(PagedKv, BlocksAreTakenOnDemandAndReturned) {
  auto c = Cache(3);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->kv_blocks_total(), 3 * 16);
  const int a = *c->AllocSlot(), b = *c->AllocSlot();
  EXPECT_EQ(c->kv_blocks_free(), 48);  // an empty slot holds nothing
  RunForward(*model_, *c, a, Tok(0, 5));
  EXPECT_EQ(c->kv_blocks(a).size(), 2u);
  EXPECT_EQ(c->kv_blocks_free(), 46);
  RunForward(*model_, *c, a, Tok(5, 3));  // 8 rows: still two blocks
  EXPECT_EQ(c->kv_blocks(a).size(), 2u);
  RunForward(*model_, *c, a, Tok(8, 1));
  EXPECT_EQ(c->kv_blocks(a).size(), 3u);
  RunForward(*model_, *c, b, Tok(0, 13));
  EXPECT_EQ(c->kv_blocks(b).size(), 4u);
  EXPECT_EQ(c->kv_blocks_free(), 48 - 7);
  c->ResetSlot(a);
  EXPECT_TRUE(c->kv_blocks(a).empty());
  EXPECT_EQ(c->kv_blocks_free(), 48 - 4);
  c->FreeSlot(b);
  EXPECT_TRUE(c->kv_blocks(b).empty());
  EXPECT_EQ(c->kv_blocks_free(), 48);
  // Every block came back exactly once: the next slot to grow to the pool's size gets all of
  // them, distinct.
  CacheOptions o = c->options();
  const int s = *c->AllocSlot();
  ASSERT_TRUE(c->ReserveKv({{s, o.max_ctx}}).ok());
  auto blocks = c->kv_blocks(s);
  std::sort(blocks.begin(), blocks.end());
  EXPECT_EQ(std::unique(blocks.begin(), blocks.end()), blocks.end());
  EXPECT_EQ(blocks.size(), 16u);
  EXPECT_EQ(c->kv_blocks_free(), 32);
}

TEST_F(PagedKv, ScatteredBlocksGiveBitIdenticalLogits) {
  // The reference: one slot alone in a fresh pool, so its blocks are 0, 1, 2, ... in order.
  auto fresh = Cache(1);
  const int r = *fresh->AllocSlot();
  std::vector<std::vector<float>> want;
  want.push_back(RunForward(*model_, *fresh, r, Tok(0, 6)));
  for (size_t i = 6; i < 20; i += 3) want.push_back(RunForward(*model_, *fresh, r, Tok(i, std::min<size_t>(3, 20 - i))));
  const auto contiguous = fresh->kv_blocks(r);
  for (size_t i = 0; i < contiguous.size(); ++i) ASSERT_EQ(contiguous[i], static_cast<int32_t>(i));

  // The same tokens on a slot that grows in between two others, one of which is freed and its
  // blocks reused: the slot's blocks end up out of order and interleaved with foreign ones.
  auto c = Cache(3);
  const int x = *c->AllocSlot(), a = *c->AllocSlot(), y = *c->AllocSlot();
  RunForward(*model_, *c, x, Tok(0, 9));
  std::vector<std::vector<float>> got;
  got.push_back(RunForward(*model_, *c, a, Tok(0, 6)));
  RunForward(*model_, *c, y, Tok(3, 5));
  c->FreeSlot(x);
  for (size_t i = 6; i < 20; i += 3) {
    // z takes the most recently freed blocks first; a then takes the next ones, and reuses z's
    // after z is freed.
    const int z = *c->AllocSlot();
    RunForward(*model_, *c, z, Tok(0, i % 2 == 0 ? 2 : 6));
    got.push_back(RunForward(*model_, *c, a, Tok(i, std::min<size_t>(3, 20 - i))));
    RunForward(*model_, *c, y, Tok(1, 1));
    c->FreeSlot(z);
  }
  const auto scattered = c->kv_blocks(a);
  ASSERT_EQ(scattered.size(), contiguous.size());
  EXPECT_FALSE(std::is_sorted(scattered.begin(), scattered.end())) << "the layout under test is not scattered";
  bool gap = false;
  for (size_t i = 1; i < scattered.size(); ++i) gap |= scattered[i] != scattered[i - 1] + 1;
  EXPECT_TRUE(gap);
  // Bit-identical: the CPU reference reads the same rows in the same order whatever the layout.
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], want[i]) << "forward " << i;
  // The rows are where the table says (not merely somewhere the attention also reads).
  for (bool values : {false, true}) {
    EXPECT_EQ(c->SlotKvF32(0, values, a, 20), fresh->SlotKvF32(0, values, r, 20)) << "values " << values;
  }

  // And so does a different block size.
  auto big = Cache(1, 0, 16);
  const int s = *big->AllocSlot();
  EXPECT_EQ(RunForward(*model_, *big, s, Tok(0, 6)), want[0]);
  EXPECT_EQ(RunForward(*model_, *big, s, Tok(6, 3)), want[1]);
}

TEST_F(PagedKv, ExhaustedPoolIsResourceExhaustedAndLeavesEverySlotUntouched) {
  auto c = Cache(2, /*blocks=*/5);  // 20 rows for both slots
  const int a = *c->AllocSlot(), b = *c->AllocSlot();
  RunForward(*model_, *c, a, Tok(0, 11));  // 3 blocks
  RunForward(*model_, *c, b, Tok(0, 4));   // 1 block
  ASSERT_EQ(c->kv_blocks_free(), 1);
  const auto blocks_a = c->kv_blocks(a), blocks_b = c->kv_blocks(b);
  const auto state_a = SlotState(*c, a), state_b = SlotState(*c, b);

  // a needs one more block (rows 11..13), b two (rows 4..8): one batch, three blocks, one free.
  auto o = model_->Forward({SeqInput{a, Tok(11, 3), StateMode::kUpdate, true}, SeqInput{b, Tok(4, 5), StateMode::kUpdate, true}},
                           *c);
  ASSERT_FALSE(o.ok());
  EXPECT_EQ(o.status().code(), StatusCode::kResourceExhausted) << o.status().ToString();
  EXPECT_NE(o.status().ToString().find("pool"), std::string::npos) << o.status().ToString();
  // A verify's tail needs blocks too: a's 5-token verify reaches row 15.
  ASSERT_TRUE(c->BeginLog(a, false).ok());
  auto v = model_->Forward({SeqInput{a, Tok(11, 5), StateMode::kLog, true}, SeqInput{b, Tok(4, 1), StateMode::kUpdate, true}},
                           *c);
  EXPECT_EQ(v.status().code(), StatusCode::kResourceExhausted) << v.status().ToString();
  ASSERT_TRUE(c->Commit(a, 0).ok());

  EXPECT_EQ(c->length(a), 11);
  EXPECT_EQ(c->length(b), 4);
  EXPECT_EQ(c->kv_blocks(a), blocks_a);
  EXPECT_EQ(c->kv_blocks(b), blocks_b);
  EXPECT_EQ(c->kv_blocks_free(), 1);
  EXPECT_EQ(SlotState(*c, a), state_a);
  EXPECT_EQ(SlotState(*c, b), state_b);

  // The slots carry on as if the failed calls never happened.
  auto ref = Cache(1);
  const int r = *ref->AllocSlot();
  RunForward(*model_, *ref, r, Tok(0, 11));
  EXPECT_EQ(RunForward(*model_, *c, a, Tok(11, 3)), RunForward(*model_, *ref, r, Tok(11, 3)));
  EXPECT_EQ(c->kv_blocks_free(), 0);
  // A slot that outgrows max_ctx is refused the same way, before anything changes.
  auto far = c->ReserveKv({{b, 65}});
  EXPECT_EQ(far.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(c->kv_blocks(b), blocks_b);
}

TEST_F(PagedKv, CommitAfterPartlyRejectedVerifyFreesTheTailsBlocks) {
  auto c = Cache(1);
  const int a = *c->AllocSlot();
  RunForward(*model_, *c, a, Tok(0, 6));  // rows 0..5: 2 blocks
  ASSERT_EQ(c->kv_blocks(a).size(), 2u);
  ASSERT_TRUE(c->BeginLog(a, false).ok());
  RunForward(*model_, *c, a, Tok(6, 9), true, StateMode::kLog);  // rows 6..14 written: 4 blocks
  EXPECT_EQ(c->kv_blocks(a).size(), 4u);
  EXPECT_EQ(c->length(a), 6);
  ASSERT_TRUE(c->Commit(a, 3).ok());  // keeps rows 0..8: 3 blocks
  EXPECT_EQ(c->length(a), 9);
  EXPECT_EQ(c->kv_blocks(a).size(), 3u);
  EXPECT_EQ(c->kv_blocks_free(), 16 - 3);
  // All rejected: back to the committed length's blocks.
  ASSERT_TRUE(c->BeginLog(a, false).ok());
  RunForward(*model_, *c, a, Tok(9, 8), true, StateMode::kLog);  // rows 9..16: 5 blocks
  EXPECT_EQ(c->kv_blocks(a).size(), 5u);
  ASSERT_TRUE(c->Commit(a, 0).ok());
  EXPECT_EQ(c->kv_blocks(a).size(), 3u);
  EXPECT_EQ(c->kv_blocks_free(), 13);

  // The kept rows are the slot's state: decoding on matches a slot fed those tokens directly
  // (the GDN commit replays with the decode step, so within its rollback tolerance).
  auto ref = Cache(1);
  const int r = *ref->AllocSlot();
  RunForward(*model_, *ref, r, Tok(0, 9));
  const auto got = RunForward(*model_, *c, a, Tok(9, 2));
  const auto want = RunForward(*model_, *ref, r, Tok(9, 2));
  EXPECT_LE(RelL2(got, want), 1e-5);
}

}  // namespace
}  // namespace specd::testing
