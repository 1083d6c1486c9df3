// Variable-length batching (issue 2, item 5): ONE forward over several sequences in different
// slots, mixing a fresh prefill chunk, a decode token and cached multi-token chunks, equals running
// each sequence alone on its own fresh cache. Also the input checks of Forward, which must reject a
// bad request before touching any state.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "runtime/backend.h"
#include "test_util.h"

namespace specd::testing {
namespace {

constexpr double kTol = 1e-5;

class Batch : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    backend_ = MakeCpuBackend();
    auto m = Qwen35Model::Load(ModelDir(GetParam()), backend_.get());
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    model_ = std::move(m).value();
    V_ = model_->config().vocab_size;
  }
  std::unique_ptr<ModelCache> NewCache(int slots, int64_t ctx) {
    CacheOptions o;
    o.num_slots = slots;
    o.max_ctx = ctx;
    auto c = model_->NewCache(o);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(c).value() : nullptr;
  }
  std::vector<int32_t> Ids(size_t n) {
    std::uniform_int_distribution<int32_t> u(0, static_cast<int32_t>(V_ - 1));
    std::vector<int32_t> v(n);
    for (auto& x : v) x = u(rng_);
    return v;
  }
  // Logits of `tokens` after `history`, each sequence alone on a fresh one-slot cache.
  std::vector<float> Alone(const std::vector<int32_t>& history, const std::vector<int32_t>& tokens, bool all) {
    auto c = NewCache(1, 256);
    const int slot = *c->AllocSlot();
    if (!history.empty()) RunForward(*model_, *c, slot, history, /*all_logits=*/false);
    return RunForward(*model_, *c, slot, tokens, all);
  }

  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Qwen35Model> model_;
  int64_t V_ = 0;
  std::mt19937 rng_{12345};
};

TEST_P(Batch, MixedBatchEqualsEachSequenceAlone) {
  auto cache = NewCache(4, 256);
  for (int i = 0; i < 4; ++i) ASSERT_EQ(*cache->AllocSlot(), i);

  struct Seq {
    int slot;
    std::vector<int32_t> history;
    std::vector<int32_t> tokens;
    bool all_logits;
  };
  // Fresh prefill chunk (crosses no GDN chunk but > K), single decode token, multi-token cached
  // chunk, short cached chunk (< conv width).
  std::vector<Seq> seqs = {
      {2, {}, Ids(20), true},
      {0, Ids(10), Ids(1), false},
      {3, Ids(12), Ids(7), true},
      {1, Ids(5), Ids(3), false},
  };

  // The histories, themselves one batched forward (slots 0, 3, 1).
  std::vector<SeqInput> hist;
  for (const auto& s : seqs) {
    if (!s.history.empty()) hist.push_back(SeqInput{s.slot, s.history, StateMode::kUpdate, false});
  }
  auto h = model_->Forward(hist, *cache);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  {
    const auto logits = backend_->DownloadF32(h->logits);
    ASSERT_EQ(logits.size(), hist.size() * V_);
    for (size_t i = 0; i < hist.size(); ++i) {
      const auto want = Alone({}, hist[i].tokens, false);
      const std::vector<float> got(logits.begin() + i * V_, logits.begin() + (i + 1) * V_);
      EXPECT_LE(MaxRowRelErr(got, want, V_), kTol) << "history of slot " << hist[i].slot;
    }
  }

  std::vector<SeqInput> in;
  for (const auto& s : seqs) in.push_back(SeqInput{s.slot, s.tokens, StateMode::kUpdate, s.all_logits});
  auto out = model_->Forward(in, *cache);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->rows, (std::vector<int64_t>{20, 1, 7, 1}));
  EXPECT_EQ(out->row0, (std::vector<int64_t>{0, 20, 21, 28}));
  const auto logits = backend_->DownloadF32(out->logits);
  ASSERT_EQ(logits.size(), 29 * static_cast<size_t>(V_));

  for (size_t i = 0; i < seqs.size(); ++i) {
    const auto& s = seqs[i];
    SCOPED_TRACE("slot " + std::to_string(s.slot));
    const std::vector<float> got(logits.begin() + out->row0[i] * V_,
                                 logits.begin() + (out->row0[i] + out->rows[i]) * V_);
    const auto want = Alone(s.history, s.tokens, s.all_logits);
    const double err = MaxRowRelErr(got, want, V_);
    std::printf("  [%s] slot %d (%zu cached + %zu) max row rel err = %.3g\n", GetParam(), s.slot,
                s.history.size(), s.tokens.size(), err);
    EXPECT_LE(err, kTol);
    EXPECT_EQ(cache->length(s.slot), static_cast<int64_t>(s.history.size() + s.tokens.size()));
  }

  // The batch keeps going: one more mixed step (decode on every slot) still matches.
  std::vector<SeqInput> step;
  std::vector<int32_t> next = Ids(4);
  for (size_t i = 0; i < seqs.size(); ++i) step.push_back(SeqInput{seqs[i].slot, {next[i]}, StateMode::kUpdate, false});
  auto out2 = model_->Forward(step, *cache);
  ASSERT_TRUE(out2.ok()) << out2.status().ToString();
  const auto l2 = backend_->DownloadF32(out2->logits);
  for (size_t i = 0; i < seqs.size(); ++i) {
    auto hist_all = seqs[i].history;
    hist_all.insert(hist_all.end(), seqs[i].tokens.begin(), seqs[i].tokens.end());
    const auto want = Alone(hist_all, {next[i]}, false);
    const std::vector<float> got(l2.begin() + i * V_, l2.begin() + (i + 1) * V_);
    EXPECT_LE(MaxRowRelErr(got, want, V_), kTol) << "decode step, slot " << seqs[i].slot;
  }
}

TEST_P(Batch, BatchOrderDoesNotMatter) {
  // The same two spans in either order give the same rows.
  const auto a = Ids(9), b = Ids(4);
  auto c1 = NewCache(2, 64), c2 = NewCache(2, 64);
  for (auto* c : {c1.get(), c2.get()}) {
    ASSERT_EQ(*c->AllocSlot(), 0);
    ASSERT_EQ(*c->AllocSlot(), 1);
  }
  auto o1 = model_->Forward({SeqInput{0, a, StateMode::kUpdate, true}, SeqInput{1, b, StateMode::kUpdate, true}}, *c1);
  auto o2 = model_->Forward({SeqInput{1, b, StateMode::kUpdate, true}, SeqInput{0, a, StateMode::kUpdate, true}}, *c2);
  ASSERT_TRUE(o1.ok() && o2.ok());
  const auto l1 = backend_->DownloadF32(o1->logits), l2 = backend_->DownloadF32(o2->logits);
  const size_t na = a.size() * V_;
  std::vector<float> a1(l1.begin(), l1.begin() + na), b1(l1.begin() + na, l1.end());
  std::vector<float> b2(l2.begin(), l2.begin() + b.size() * V_), a2(l2.begin() + b.size() * V_, l2.end());
  EXPECT_LE(MaxRowRelErr(a1, a2, V_), kTol);
  EXPECT_LE(MaxRowRelErr(b1, b2, V_), kTol);
}

TEST_P(Batch, RejectedRequestsChangeNoState) {
  constexpr int64_t kCtx = 32;
  auto cache = NewCache(3, kCtx);  // slots 0 and 1 in use, slot 2 free
  auto twin = NewCache(3, kCtx);   // same history, never sees a rejected call
  const auto h0 = Ids(10), h1 = Ids(30);
  for (auto* c : {cache.get(), twin.get()}) {
    ASSERT_EQ(*c->AllocSlot(), 0);
    ASSERT_EQ(*c->AllocSlot(), 1);
    auto r = model_->Forward({SeqInput{0, h0, StateMode::kUpdate, false}, SeqInput{1, h1, StateMode::kUpdate, false}}, *c);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
  const auto ok0 = Ids(3);
  auto valid = [&](int slot) { return SeqInput{slot, ok0, StateMode::kUpdate, true}; };
  auto bad = [&](int slot, std::vector<int32_t> t) { return SeqInput{slot, std::move(t), StateMode::kUpdate, false}; };

  struct Case {
    const char* what;
    std::vector<SeqInput> in;
    StatusCode code;
  };
  const std::vector<Case> cases = {
      {"token id == vocab size", {valid(0), bad(1, {1, 2, static_cast<int32_t>(V_)})}, StatusCode::kInvalidArgument},
      {"negative token id", {valid(0), bad(1, {-1})}, StatusCode::kInvalidArgument},
      {"unallocated slot", {valid(0), bad(2, {1})}, StatusCode::kInvalidArgument},
      {"slot out of range", {valid(0), bad(3, {1})}, StatusCode::kInvalidArgument},
      {"negative slot", {valid(0), bad(-1, {1})}, StatusCode::kInvalidArgument},
      {"same slot twice", {valid(0), bad(1, {1}), bad(0, {2})}, StatusCode::kInvalidArgument},
      {"context capacity exceeded", {valid(0), bad(1, {1, 2, 3})}, StatusCode::kResourceExhausted},
      {"empty token list", {valid(0), bad(1, {})}, StatusCode::kInvalidArgument},
      {"empty batch", {}, StatusCode::kInvalidArgument},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    auto r = model_->Forward(c.in, *cache);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), c.code) << r.status().ToString();
    EXPECT_EQ(cache->length(0), 10);
    EXPECT_EQ(cache->length(1), 30);
    EXPECT_TRUE(cache->in_use(0));
    EXPECT_TRUE(cache->in_use(1));
    EXPECT_FALSE(cache->in_use(2));
  }
  // Exactly at capacity is fine; the state behaves as if the rejected calls never happened.
  const auto t1 = Ids(2);
  std::vector<SeqInput> good = {valid(0), SeqInput{1, t1, StateMode::kUpdate, true}};
  auto a = model_->Forward(good, *cache);
  auto b = model_->Forward(good, *twin);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_LE(MaxRowRelErr(backend_->DownloadF32(a->logits), backend_->DownloadF32(b->logits), V_), 1e-7);
  EXPECT_EQ(cache->length(0), 13);
  EXPECT_EQ(cache->length(1), kCtx);
  // And they match the sequences run alone.
  auto la = backend_->DownloadF32(a->logits);
  EXPECT_LE(MaxRowRelErr(std::vector<float>(la.begin(), la.begin() + 3 * V_), Alone(h0, ok0, true), V_), kTol);
  EXPECT_LE(MaxRowRelErr(std::vector<float>(la.begin() + 3 * V_, la.end()), Alone(h1, t1, true), V_), kTol);
}

INSTANTIATE_TEST_SUITE_P(Models, Batch, ::testing::Values("dense", "moe"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace specd::testing
