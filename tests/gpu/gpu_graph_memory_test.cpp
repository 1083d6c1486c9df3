// CUDA graphs under traffic: one graph per padded batch shape serves any slots, graph memory
// stays bounded however many compositions run, and a full device (injected or real) is a status,
// with the forward falling back to op by op when the failure hits a capture.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <random>

#include "gpu_test_util.h"
#include "checkpoint/presets.h"
#include "runtime/backend.h"

namespace specd::testing {
namespace {

// Restores the tests' graph policy (capture at first sighting, 128 graphs) at scope end.
struct GraphPolicy {
  GraphPolicy(int limit, int after) { ChangeOptions(*Gpu(), [&](BackendOptions& o) { o.graph_limit = limit; o.graph_capture_after = after; }); }
  ~GraphPolicy() {
    ChangeOptions(*Gpu(), [&](BackendOptions& o) { o.graph_limit = 128; o.graph_capture_after = 1; });
    ChangeOptions(*Gpu(), [&](BackendOptions& o) { o.cuda_graphs = true; });
  }
};

std::vector<int32_t> Prompt(int q, int n) {
  std::vector<int32_t> p;
  for (int t = 0; t < n; ++t) p.push_back((t * 37 + q * 11 + 3) % 500 + 3);
  return p;
}

// Decode steps over changing sets of slots and verify spans of changing lengths, all of one
// shape (3 sequences, 9 tokens, longest 5): graphs on replay one graph for all of them, and
// every logits row equals the op-by-op run's bit for bit.
TEST(GpuGraphMemory, OneGraphServesAnySlotsOfItsShape) {
  SPECD_REQUIRE_GPU();
  auto m = std::move(Qwen35Model::Load(ModelDir("dense"), Gpu())).value();
  const std::vector<std::vector<int>> sets{{0, 1, 2}, {3, 4, 5}, {1, 5, 7}, {6, 2, 0}};
  const std::vector<std::vector<int>> lens{{5, 3, 1}, {1, 5, 3}, {3, 1, 5}, {2, 2, 4}};
  std::vector<float> out[2];
  int64_t captures[2] = {0, 0}, replays[2] = {0, 0};
  for (int graphs = 0; graphs < 2; ++graphs) {
    GraphPolicy policy(128, 1);
    ChangeOptions(*Gpu(), [&](BackendOptions& o) { o.cuda_graphs = graphs == 1; });
    CacheOptions o;
    o.num_slots = 8;
    o.max_ctx = 128;
    auto cache = std::move(m->NewCache(o)).value();
    for (int q = 0; q < 8; ++q) {
      const int slot = *cache->AllocSlot();
      RunForward(*m, *cache, slot, Prompt(q, 6 + q), false);
    }
    const auto s1 = Gpu()->graph_stats();
    for (size_t i = 0; i < sets.size(); ++i) {
      std::vector<SeqInput> batch;
      for (size_t j = 0; j < 3; ++j) {
        const int slot = sets[i][j];
        ASSERT_TRUE(cache->BeginLog(slot, false).ok());
        std::vector<int32_t> t = Prompt(static_cast<int>(i * 3 + j), lens[i][j]);
        batch.push_back(SeqInput{slot, t, StateMode::kLog, true});
      }
      auto fo = m->Forward(batch, *cache);
      ASSERT_TRUE(fo.ok()) << fo.status().ToString();
      const auto v = Gpu()->DownloadF32(fo->logits);
      out[graphs].insert(out[graphs].end(), v.begin(), v.end());
      for (size_t j = 0; j < 3; ++j) ASSERT_TRUE(cache->Commit(sets[i][j], 1).ok());
    }
    const auto s2 = Gpu()->graph_stats();
    captures[graphs] = s2.captures - s1.captures;
    replays[graphs] = s2.replays - s1.replays;
  }
  EXPECT_EQ(captures[0], 0);
  EXPECT_EQ(replays[0], 0);
  // {5,3,1} {1,5,3} {3,1,5} are one shape (9 tokens, longest 5); {2,2,4} is another.
  EXPECT_EQ(captures[1], 2);
  EXPECT_EQ(replays[1], 4);
  ASSERT_EQ(out[0].size(), out[1].size());
  EXPECT_TRUE(out[0] == out[1]) << "graph replays differ from the ops";
}

// Random compositions, thousands of forwards, a small graph limit: the graph count stays within
// the limit, the shared workspace stops growing once the largest shape has been seen, and
// device memory stays flat.
TEST(GpuGraphMemory, VariedTrafficKeepsGraphMemoryBounded) {
  SPECD_REQUIRE_GPU();
  auto m = Qwen35Model::Random(ReleasedShapes("0.8B").value(), Gpu(), 11);
  GraphPolicy policy(12, 2);
  CacheOptions o;
  o.num_slots = 24;
  o.max_ctx = 4096;
  o.log_capacity = 9;
  auto cache = std::move(m->NewCache(o)).value();
  std::mt19937 rng(5);
  std::vector<int> slots;
  for (int q = 0; q < 24; ++q) {
    slots.push_back(*cache->AllocSlot());
    RunForward(*m, *cache, slots.back(), Prompt(q, 3), false);
  }
  const auto st0 = Gpu()->graph_stats();
  std::vector<int64_t> workspace, used;
  int64_t largest = 0;  // the workspace once the largest shape (24 x 8 tokens) was captured
  const int kSteps = 1500;
  for (int step = 0; step < kSteps; ++step) {
    std::shuffle(slots.begin(), slots.end(), rng);
    const bool big = step < 2;  // seen twice: captured
    const int S = big ? 24 : 1 + static_cast<int>(rng() % 24);
    std::vector<SeqInput> batch;
    for (int j = 0; j < S; ++j) {
      const int len = big ? 8 : 1 + static_cast<int>(rng() % 8);
      const int slot = slots[static_cast<size_t>(j)];
      if (cache->length(slot) + len + 1 >= o.max_ctx) cache->ResetSlot(slot);
      ASSERT_TRUE(cache->BeginLog(slot, false).ok());
      batch.push_back(SeqInput{slot, Prompt(step + j, len), StateMode::kLog, true});
    }
    auto fo = m->Forward(batch, *cache);
    ASSERT_TRUE(fo.ok()) << "step " << step << ": " << fo.status().ToString();
    for (const auto& in : batch) ASSERT_TRUE(cache->Commit(in.slot, static_cast<int>(rng() % (in.tokens.size() + 1))).ok());
    const auto st = Gpu()->graph_stats();
    ASSERT_LE(st.graphs, 12) << "step " << step;
    if (step == 1) largest = st.workspace_bytes;
    if (step % 100 == 99) {
      Gpu()->Synchronize();
      workspace.push_back(st.workspace_bytes);
      used.push_back(Gpu()->device_memory_used());
    }
  }
  const auto st = Gpu()->graph_stats();
  EXPECT_GT(st.replays, st0.replays);
  EXPECT_GT(st.evictions, st0.evictions) << "a limit of 12 with this many shapes must evict";
  // The workspace: set by the largest forward (at most twice its first size: chunks double),
  // whatever ran after it; device memory flat (within 1 %) over the second half.
  const size_t h = workspace.size() / 2;
  EXPECT_GT(largest, 0);
  EXPECT_LE(workspace.back(), 2 * largest) << "workspace " << largest << " -> " << workspace.back();
  EXPECT_LE(static_cast<double>(used.back()), 1.01 * static_cast<double>(used[h]))
      << "device memory " << used[h] << " -> " << used.back();
  std::printf("[graph memory] steps %d: graphs %lld (limit 12), captures %lld, replays %lld, evictions %lld, "
              "workspace %.1f MiB, device used %.2f GiB -> %.2f GiB\n",
              kSteps, static_cast<long long>(st.graphs), static_cast<long long>(st.captures - st0.captures),
              static_cast<long long>(st.replays - st0.replays), static_cast<long long>(st.evictions - st0.evictions),
              st.workspace_bytes / 1048576.0,
              used[h] / 1073741824.0, used.back() / 1073741824.0);
}

// An allocation that fails inside a capture: nothing of the capture ran, so the forward runs op
// by op and gives exactly the logits of an undisturbed run. One that fails outside a capture:
// ResourceExhausted, and the next forward (fresh cache) is right again.
TEST(GpuGraphMemory, AllocationFailureIsAStatusAndCaptureFallsBack) {
  SPECD_REQUIRE_GPU();
  auto m = std::move(Qwen35Model::Load(ModelDir("dense"), Gpu())).value();
  GraphPolicy policy(128, 1);
  CacheOptions o;
  o.max_ctx = 64;
  const auto p = Prompt(1, 20);
  auto run = [&](int64_t fail_after, bool graphs, Status* st) {
    ChangeOptions(*Gpu(), [&](BackendOptions& o) { o.cuda_graphs = graphs; });
    auto c = std::move(m->NewCache(o)).value();
    const int s = *c->AllocSlot();
    std::vector<float> out = RunForward(*m, *c, s, {p.begin(), p.begin() + 10}, false);
    if (fail_after >= 0) Gpu()->InjectAllocFailures(fail_after, 1);
    auto fo = m->Forward({SeqInput{s, {p[10]}, StateMode::kUpdate, false}}, *c);  // a new shape: captured
    *st = fo.ok() ? Status::Ok() : fo.status();
    if (fo.ok()) {
      const auto v = Gpu()->DownloadF32(fo->logits);
      out.insert(out.end(), v.begin(), v.end());
      const auto next = RunForward(*m, *c, s, {p[11]}, false);
      out.insert(out.end(), next.begin(), next.end());
    }
    Gpu()->InjectAllocFailures(0, 0);
    return out;
  };
  Status st;
  const auto want = run(-1, true, &st);
  ASSERT_TRUE(st.ok());
  const auto s0 = Gpu()->graph_stats();
  const int64_t f0 = Gpu()->alloc_failures();
  const auto got = run(3, true, &st);  // the 4th allocation of the capture fails
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(Gpu()->alloc_failures(), f0 + 1);
  EXPECT_EQ(Gpu()->graph_stats().capture_failures, s0.capture_failures + 1);
  EXPECT_TRUE(got == want) << "the fallback's logits differ";
  // Outside any capture (graphs off): the step's status, and the model serves on.
  run(3, false, &st);
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted) << st.ToString();
  EXPECT_TRUE(run(-1, false, &st) == want);
}

// The device truly full: allocations fail inside the backend, the forward reports it, and once
// memory is back the model serves as before.
TEST(GpuGraphMemory, RealDeviceExhaustionIsAStatus) {
  SPECD_REQUIRE_GPU();
  auto m = std::move(Qwen35Model::Load(ModelDir("dense"), Gpu())).value();
  GraphPolicy policy(128, 1);
  CacheOptions o;
  o.max_ctx = 64;
  auto c = std::move(m->NewCache(o)).value();
  const int s = *c->AllocSlot();
  const auto want = RunForward(*m, *c, s, Prompt(2, 9), false);
  Gpu()->ReleaseCachedMemory();
  // Take the whole device: 1 GiB pieces until one fails, then ever smaller ones down to 256
  // bytes, so that no allocation a forward makes can succeed.
  std::vector<Tensor> hog;
  bool full = false;
  for (int64_t bytes : {int64_t{1} << 30, int64_t{1} << 24, int64_t{1} << 18, int64_t{1} << 12, int64_t{256}}) {
    full = false;
    for (int i = 0; i < 70000 && !full; ++i) {
      try {
        hog.push_back(Gpu()->Empty(DType::kI32, {bytes / 4}));
      } catch (const std::bad_alloc&) {
        full = true;
      }
    }
    ASSERT_TRUE(full) << "pieces of " << bytes << " bytes never ran out";
  }
  auto c2 = m->NewCache(o);
  EXPECT_FALSE(c2.ok());
  if (!c2.ok()) {
    EXPECT_EQ(c2.status().code(), StatusCode::kResourceExhausted) << c2.status().ToString();
  }
  auto fo = m->Forward({SeqInput{s, Prompt(3, 4), StateMode::kUpdate, false}}, *c);
  EXPECT_FALSE(fo.ok());
  if (!fo.ok()) {
    EXPECT_EQ(fo.status().code(), StatusCode::kResourceExhausted) << fo.status().ToString();
  }
  hog.clear();
  Gpu()->ReleaseCachedMemory();
  auto c3 = std::move(m->NewCache(o)).value();
  EXPECT_EQ(RunForward(*m, *c3, *c3->AllocSlot(), Prompt(2, 9), false), want);
}

}  // namespace
}  // namespace specd::testing
