// Forwards padded to graph shapes give the real spans exactly what the unpadded forward gives,
// and a full device (an injected allocation failure) is a status at every engine boundary,
// never an exception, with the engine serving again afterwards. CPU reference backend.
#include <gtest/gtest.h>

#include <algorithm>

#include "runtime/backend.h"
#include "speculative/engine.h"
#include "test_util.h"

namespace specd::testing {
namespace {

std::unique_ptr<Qwen35Model> Dense(Backend* be) { return std::move(Qwen35Model::Load(ModelDir("dense"), be)).value(); }

// Runs the same speculation-like sequence of batches (prefill, then batched verify + commit
// steps of varied lengths, then decode steps) with the given padding; returns every logits row
// and the slots' final KV rows.
std::vector<float> RunBatches(Qwen35Model& m, Qwen35Model::GraphPaddingMode mode, int nseq, bool* pad_used) {
  m.set_graph_padding(mode);
  CacheOptions o;
  o.num_slots = nseq;
  o.max_ctx = 128;
  o.log_capacity = 6;
  auto cache = std::move(m.NewCache(o)).value();
  std::vector<int> slots;
  std::vector<float> out;
  auto add = [&](const ForwardOutput& fo) {
    const auto v = m.backend()->DownloadF32(fo.logits);
    out.insert(out.end(), v.begin(), v.end());
  };
  for (int q = 0; q < nseq; ++q) {
    slots.push_back(*cache->AllocSlot());
    std::vector<int32_t> prompt;
    for (int t = 0; t < 7 + q; ++t) prompt.push_back((t * 31 + q * 7 + 5) % 500 + 3);
    auto fo = m.Forward({SeqInput{slots.back(), prompt, StateMode::kUpdate, false}}, *cache);
    EXPECT_TRUE(fo.ok()) << fo.status().ToString();
    add(*fo);
  }
  for (int step = 0; step < 3; ++step) {
    std::vector<SeqInput> batch;
    for (int q = 0; q < nseq; ++q) {
      const int len = 1 + (q + step) % 5;  // k = 0..4: decode and verify spans mixed
      std::vector<int32_t> toks;
      for (int t = 0; t < len; ++t) toks.push_back((step * 13 + q * 5 + t * 3) % 500 + 3);
      EXPECT_TRUE(cache->BeginLog(slots[q], false).ok());
      batch.push_back(SeqInput{slots[q], toks, StateMode::kLog, true});
    }
    auto fo = m.Forward(batch, *cache);
    EXPECT_TRUE(fo.ok()) << fo.status().ToString();
    EXPECT_EQ(fo->logits.dim(0), fo->row0.back() + fo->rows.back()) << "only the real rows come back";
    add(*fo);
    for (int q = 0; q < nseq; ++q) EXPECT_TRUE(cache->Commit(slots[q], std::min(1 + (q + step) % 5, (q + step) % 3)).ok());
  }
  std::vector<SeqInput> decode;
  for (int q = 0; q < nseq; ++q) decode.push_back(SeqInput{slots[q], {static_cast<int32_t>(q + 9)}, StateMode::kUpdate, true});
  auto fo = m.Forward(decode, *cache);
  EXPECT_TRUE(fo.ok()) << fo.status().ToString();
  add(*fo);
  for (int q = 0; q < nseq; ++q) {
    const auto kv = cache->SlotKvF32(0, false, slots[q], cache->length(slots[q]));
    out.insert(out.end(), kv.begin(), kv.end());
  }
  // Dummy spans write the pad slot's KV rows from position 0; nothing else does.
  const auto pad_kv = cache->SlotKvF32(0, false, cache->pad_slot(), 1);
  *pad_used = std::any_of(pad_kv.begin(), pad_kv.end(), [](float x) { return x != 0.f; });
  m.set_graph_padding(Qwen35Model::GraphPaddingMode::kAuto);
  return out;
}

TEST(GraphShapes, PaddedForwardsEqualUnpadded) {
  auto be = MakeCpuBackend();
  auto m = Dense(be.get());
  for (int nseq : {3, 9, 13}) {  // 9 and 13 sequences pad to 12 and 16
    bool pad_never = true, pad_always = false;
    const auto plain = RunBatches(*m, Qwen35Model::GraphPaddingMode::kNever, nseq, &pad_never);
    const auto padded = RunBatches(*m, Qwen35Model::GraphPaddingMode::kAlways, nseq, &pad_always);
    EXPECT_FALSE(pad_never);
    EXPECT_EQ(pad_always, nseq != 3) << nseq << " sequences: 3 is a bucket, 9 and 13 are not";
    ASSERT_EQ(plain.size(), padded.size());
    // The CPU GEMM may block rows differently for another row count: fp32 rounding, no more.
    EXPECT_LT(RelL2(padded, plain), 1e-5) << nseq << " sequences";
  }
}

TEST(AllocationFailure, ForwardReturnsResourceExhaustedAndTheModelServesOn) {
  auto be = MakeCpuBackend();
  auto m = Dense(be.get());
  CacheOptions o;
  o.max_ctx = 64;
  auto cache = std::move(m->NewCache(o)).value();
  const int slot = *cache->AllocSlot();
  const std::vector<int32_t> prompt{5, 6, 7, 8, 9};
  const auto want = RunForward(*m, *cache, slot, prompt, false);
  for (int64_t after : {0, 3, 20}) {
    auto c = std::move(m->NewCache(o)).value();
    const int s = *c->AllocSlot();
    be->InjectAllocFailures(after, 1);
    const int64_t before = be->alloc_failures();
    auto fo = m->Forward({SeqInput{s, prompt, StateMode::kUpdate, false}}, *c);
    ASSERT_FALSE(fo.ok()) << "allocation " << after << " was to fail";
    EXPECT_EQ(fo.status().code(), StatusCode::kResourceExhausted) << fo.status().ToString();
    EXPECT_EQ(be->alloc_failures(), before + 1);
    // A fresh cache on the same model gives the same logits as before.
    auto c2 = std::move(m->NewCache(o)).value();
    EXPECT_EQ(RunForward(*m, *c2, *c2->AllocSlot(), prompt, false), want);
  }
  be->InjectAllocFailures(0, 1);
  auto c = m->NewCache(o);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kResourceExhausted);
}

TEST(AllocationFailure, EngineStepFailsWithResourceExhaustedAndANewEngineGeneratesTheSame) {
  auto be = MakeCpuBackend();
  auto m = Dense(be.get());
  auto draft = std::move(Qwen35Model::Load(ModelDir("draft_near"), be.get())).value();
  auto make = [&]() {
    EngineOptions o;
    o.max_seqs = 4;
    o.max_ctx = 256;
    o.default_k = 3;
    return std::move(SpeculativeEngine::Create(m.get(), std::move(MakeDraftModelDrafter(draft.get(), 512, 4, 256, 16)).value(), o))
        .value();
  };
  auto run = [&](SpeculativeEngine& e) {
    std::vector<int> ids;
    for (int q = 0; q < 3; ++q) {
      GenerationRequest r;
      r.prompt = {static_cast<int32_t>(10 + q), 20, 30, 40};
      r.max_tokens = 12;
      r.ignore_eos = true;
      ids.push_back(*e.Add(r));
    }
    std::vector<std::vector<int32_t>> out;
    while (e.HasWork()) {
      const Status st = e.Step();
      if (!st.ok()) return std::make_pair(st, out);
    }
    for (int id : ids) out.push_back(e.Generated(id));
    return std::make_pair(Status::Ok(), out);
  };
  auto clean = make();
  const auto [ok_status, want] = run(*clean);
  ASSERT_TRUE(ok_status.ok()) << ok_status.ToString();
  for (int64_t after : {2, 50, 400}) {
    auto e = make();
    be->InjectAllocFailures(after, 1);
    const auto [st, partial] = run(*e);
    EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << "allocation " << after << ": " << st.ToString();
    e.reset();
    auto again = make();
    const auto [st2, got] = run(*again);
    ASSERT_TRUE(st2.ok()) << st2.ToString();
    EXPECT_EQ(got, want) << "after a failure at allocation " << after;
  }
}

}  // namespace
}  // namespace specd::testing
