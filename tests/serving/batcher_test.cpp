// The batcher without gRPC: requests come with a fake RequestSink that records what the batcher
// reports, over a real engine on the CPU fixture model. What the daemon's streams see (tokens,
// outcomes, error statuses, admission, cancellation, aborts, failed steps, shutdown) is decided
// here, so it is tested here; tests/integration/ covers the gRPC mapping on top.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <thread>

#include "engine_run.h"
#include "server/batcher.h"
#include "test_util.h"

namespace specd::serve {
namespace {

using namespace std::chrono_literals;
using specd::testing::ModelDir;

// What one request's sink saw. Shared with the test, which outlives the sink.
struct Seen {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int32_t> ids;  // OnTokens + OnFinished, in order
  std::vector<std::string> request_ids;  // as OnTokens named them
  int token_calls = 0;
  std::optional<RequestOutcome> outcome;
  std::optional<Status> failure;
  int ends = 0;
  std::atomic<int> cancel{0};  // 0: no; 1: cancelled; 2: deadline
  std::atomic<int> cancel_after_tokens{-1};  // the sink starts reporting cancelled after this many tokens

  bool WaitEnd(std::chrono::seconds timeout = 60s) {
    std::unique_lock lk(mu);
    return cv.wait_for(lk, timeout, [&] { return ends > 0; });
  }
};

class FakeSink final : public RequestSink {
 public:
  explicit FakeSink(std::shared_ptr<Seen> s) : s_(std::move(s)) {}
  ~FakeSink() override {
    // The batcher must end every request it took before dropping its sink.
    std::lock_guard lk(s_->mu);
    EXPECT_EQ(s_->ends, taken_ ? 1 : s_->ends);
  }
  void OnTokens(const std::string& request_id, std::span<const int32_t> ids, std::string) override {
    std::lock_guard lk(s_->mu);
    EXPECT_EQ(s_->ends, 0) << "tokens after the end";
    EXPECT_FALSE(ids.empty());
    s_->ids.insert(s_->ids.end(), ids.begin(), ids.end());
    s_->request_ids.push_back(request_id);
    ++s_->token_calls;
    const int after = s_->cancel_after_tokens.load();
    if (after >= 0 && static_cast<int>(s_->ids.size()) >= after) s_->cancel = 1;
  }
  void OnFinished(std::span<const int32_t> ids, std::string, const RequestOutcome& o) override {
    std::lock_guard lk(s_->mu);
    s_->ids.insert(s_->ids.end(), ids.begin(), ids.end());
    s_->outcome = o;
    ++s_->ends;
    s_->cv.notify_all();
  }
  void OnFailed(const Status& st) override {
    std::lock_guard lk(s_->mu);
    s_->failure = st;
    ++s_->ends;
    s_->cv.notify_all();
  }
  std::optional<Status> Cancelled() const override {
    switch (s_->cancel.load()) {
      case 1: return Status(StatusCode::kCancelled, "cancelled by the client");
      case 2: return Status(StatusCode::kDeadlineExceeded, "deadline exceeded");
      default: return std::nullopt;
    }
  }
  Clock::time_point arrival() const override { return arrival_; }
  void set_taken() { taken_ = true; }

 private:
  std::shared_ptr<Seen> s_;
  Clock::time_point arrival_ = Clock::now();
  bool taken_ = false;
};

struct Models {
  std::unique_ptr<Backend> be = MakeCpuBackend();
  std::unique_ptr<Qwen35Model> target = std::move(Qwen35Model::Load(ModelDir("dense"), be.get())).value();
  std::unique_ptr<Qwen35Model> near = std::move(Qwen35Model::Load(ModelDir("draft_near"), be.get())).value();
};
Models& M() {
  static Models m;
  return m;
}

EngineFactory Factory(int max_seqs, std::atomic<int>* built = nullptr, int prefix_entries = 0) {
  return [max_seqs, built, prefix_entries]() -> StatusOr<std::unique_ptr<SpeculativeEngine>> {
    if (built) ++*built;
    EngineOptions o;
    o.max_seqs = max_seqs;
    o.max_ctx = 512;
    o.default_k = 4;
    o.prefix_cache_entries = prefix_entries;
    SPECD_ASSIGN_OR_RETURN(auto d, MakeDrafter("draft", M().target.get(), M().near.get(), max_seqs, 512, 16));
    return SpeculativeEngine::Create(M().target.get(), std::move(d), o);
  };
}

PreparedRequest Request(std::vector<int32_t> prompt, int max_tokens, std::string id = "") {
  PreparedRequest r;
  r.request_id = std::move(id);
  r.gen = specd::testing::Req(std::move(prompt), max_tokens);
  return r;
}

struct Harness {
  std::unique_ptr<cli::TextCodec> text = std::move(cli::TextCodec::ForModel("", "none")).value();
  Metrics metrics;
  std::atomic<int> engines_built{0};
  Batcher batcher;
  explicit Harness(BatcherOptions o, int prefix_entries = 0)
      : batcher(Factory(o.max_batch, &engines_built, prefix_entries), text.get(), &metrics, o) {}

  // Submits; returns the status and the record.
  std::pair<Status, std::shared_ptr<Seen>> Submit(PreparedRequest r) {
    auto seen = std::make_shared<Seen>();
    auto fake = std::make_unique<FakeSink>(seen);
    FakeSink* raw = fake.get();
    std::unique_ptr<RequestSink> sink = std::move(fake);
    Status st = batcher.Submit(std::move(r), sink);
    if (st.ok()) {
      EXPECT_EQ(sink, nullptr) << "an accepted request's sink belongs to the batcher";
      raw->set_taken();
    } else {
      EXPECT_NE(sink, nullptr) << "a refused request's sink stays with the caller";
    }
    return {st, seen};
  }
};

std::vector<int32_t> Prompt(int i) { return {static_cast<int32_t>(10 + i), 7, static_cast<int32_t>(100 + 3 * i), 42}; }

TEST(Batcher, MoreRequestsThanSlotsAllFinishWithTheIdsTheyGetAlone) {
  Harness h(BatcherOptions{2, 16, "draft", 0});
  ASSERT_TRUE(h.batcher.Start().ok());
  std::vector<std::shared_ptr<Seen>> seen;
  for (int i = 0; i < 6; ++i) {
    auto [st, s] = h.Submit(Request(Prompt(i), 12));
    ASSERT_TRUE(st.ok()) << st.ToString();
    seen.push_back(s);
  }
  std::set<std::string> ids;
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(seen[i]->WaitEnd()) << "request " << i;
    std::lock_guard lk(seen[i]->mu);
    ASSERT_TRUE(seen[i]->outcome.has_value()) << seen[i]->failure->ToString();
    const RequestOutcome& o = *seen[i]->outcome;
    EXPECT_EQ(o.reason, FinishReason::kLength);
    EXPECT_EQ(o.prompt_tokens, 4u);
    EXPECT_EQ(o.completion_tokens, 12u);
    EXPECT_GT(o.stats.verify_steps, 0);
    // Server-assigned ids: 128 random bits, the same in every message of the request.
    EXPECT_TRUE(std::regex_match(o.request_id, std::regex("specd-[0-9a-f]{32}"))) << o.request_id;
    for (const auto& rid : seen[i]->request_ids) EXPECT_EQ(rid, o.request_id);
    ids.insert(o.request_id);
    // Greedy: what the request streams in a batch of 2 slots is what it gets alone.
    const auto alone = specd::testing::RunEngine(M().target.get(), M().near.get(), false, "near", 4,
                                                  {specd::testing::Req(Prompt(i), 12)});
    EXPECT_EQ(seen[i]->ids, alone.out[0]) << "request " << i;
  }
  EXPECT_EQ(ids.size(), 6u);
  EXPECT_TRUE(h.batcher.Idle());
  const std::string m = h.metrics.Render();
  EXPECT_NE(m.find("specd:request_success_total{finished_reason=\"length\"} 6"), std::string::npos) << m;
}

// Admission is decided at Submit: before Start nothing runs, so the queue is exactly what was sent.
TEST(Batcher, RefusesWhenFullOrTheIdIsInFlight) {
  Harness h(BatcherOptions{1, 1, "draft", 0});
  auto [a, sa] = h.Submit(Request(Prompt(0), 8, "a"));
  ASSERT_TRUE(a.ok());
  auto [dup, sdup] = h.Submit(Request(Prompt(1), 8, "a"));
  EXPECT_EQ(dup.code(), StatusCode::kAlreadyExists) << dup.ToString();
  auto [b, sb] = h.Submit(Request(Prompt(1), 8, "b"));
  ASSERT_TRUE(b.ok());
  auto [c, sc] = h.Submit(Request(Prompt(2), 8, "c"));
  EXPECT_EQ(c.code(), StatusCode::kResourceExhausted) << c.ToString();
  EXPECT_NE(c.message().find("--max-batch 1, --max-queue 1"), std::string::npos) << c.message();
  ASSERT_TRUE(h.batcher.Start().ok());
  ASSERT_TRUE(sa->WaitEnd());
  ASSERT_TRUE(sb->WaitEnd());
  EXPECT_TRUE(sa->outcome.has_value());
  EXPECT_TRUE(sb->outcome.has_value());
  // Once "a" ended its id is free again.
  auto [again, sagain] = h.Submit(Request(Prompt(0), 8, "a"));
  EXPECT_TRUE(again.ok()) << again.ToString();
  ASSERT_TRUE(sagain->WaitEnd());
}

TEST(Batcher, AbortEndsQueuedAndRunningRequestsWithReasonAbort) {
  Harness h(BatcherOptions{1, 4, "draft", 0});
  auto [q, sq] = h.Submit(Request(Prompt(0), 8, "queued"));
  ASSERT_TRUE(q.ok());
  EXPECT_TRUE(h.batcher.Abort("queued"));
  EXPECT_FALSE(h.batcher.Abort("never-sent"));
  ASSERT_TRUE(h.batcher.Start().ok());
  ASSERT_TRUE(sq->WaitEnd());
  ASSERT_TRUE(sq->outcome.has_value());
  EXPECT_EQ(sq->outcome->reason, FinishReason::kAborted);
  EXPECT_EQ(sq->outcome->completion_tokens, 0u);

  auto [r, sr] = h.Submit(Request(Prompt(1), 400, "running"));
  ASSERT_TRUE(r.ok());
  for (int i = 0; i < 2000; ++i) {  // until it has streamed something
    {
      std::lock_guard lk(sr->mu);
      if (!sr->ids.empty()) break;
    }
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_TRUE(h.batcher.Abort("running"));
  ASSERT_TRUE(sr->WaitEnd());
  ASSERT_TRUE(sr->outcome.has_value());
  EXPECT_EQ(sr->outcome->reason, FinishReason::kAborted);
  EXPECT_LT(sr->outcome->completion_tokens, 400u);
  EXPECT_EQ(sr->outcome->completion_tokens, sr->ids.size());
}

// A client that goes away fails with the status its sink reports, and its slot serves the next.
TEST(Batcher, CancelledRequestFailsWithTheSinksStatusAndFreesItsSlot) {
  Harness h(BatcherOptions{1, 4, "draft", 0});
  ASSERT_TRUE(h.batcher.Start().ok());
  auto [a, sa] = h.Submit(Request(Prompt(0), 400));
  sa->cancel_after_tokens = 3;
  auto [b, sb] = h.Submit(Request(Prompt(1), 8));
  auto [c, sc] = h.Submit(Request(Prompt(2), 8));
  sc->cancel = 2;  // its deadline passes while it waits in the queue
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  h.batcher.Wake();
  ASSERT_TRUE(sa->WaitEnd());
  ASSERT_TRUE(sb->WaitEnd());
  ASSERT_TRUE(sc->WaitEnd());
  ASSERT_TRUE(sa->failure.has_value());
  EXPECT_EQ(sa->failure->code(), StatusCode::kCancelled);
  EXPECT_LT(sa->ids.size(), 400u);
  ASSERT_TRUE(sc->failure.has_value());
  EXPECT_EQ(sc->failure->code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(sc->ids.empty());
  ASSERT_TRUE(sb->outcome.has_value());
  EXPECT_EQ(sb->outcome->completion_tokens, 8u);
  const std::string m = h.metrics.Render();
  EXPECT_NE(m.find("specd:request_failure_total{code=\"CANCELLED\"} 1"), std::string::npos) << m;
  EXPECT_NE(m.find("specd:request_failure_total{code=\"DEADLINE_EXCEEDED\"} 1"), std::string::npos) << m;
}

// A failed engine step fails what was running (INTERNAL), rebuilds the engine and goes on.
TEST(Batcher, FailedStepFailsInFlightRequestsAndServingGoesOn) {
  Harness h(BatcherOptions{4, 4, "draft", 3});
  ASSERT_TRUE(h.batcher.Start().ok());
  EXPECT_EQ(h.engines_built.load(), 1);
  auto [a, sa] = h.Submit(Request(Prompt(0), 200));
  auto [b, sb] = h.Submit(Request(Prompt(1), 200));
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(sa->WaitEnd());
  ASSERT_TRUE(sb->WaitEnd());
  for (auto* s : {sa.get(), sb.get()}) {
    ASSERT_TRUE(s->failure.has_value());
    EXPECT_EQ(s->failure->code(), StatusCode::kInternal);
    EXPECT_NE(s->failure->message().find("injected failure"), std::string::npos) << s->failure->message();
  }
  auto [c, sc] = h.Submit(Request(Prompt(2), 8));
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(sc->WaitEnd());
  ASSERT_TRUE(sc->outcome.has_value());
  EXPECT_EQ(h.engines_built.load(), 2) << "one rebuild after the failed step";
  EXPECT_EQ(sc->ids, specd::testing::RunEngine(M().target.get(), M().near.get(), false, "near", 4,
                                               {specd::testing::Req(Prompt(2), 8)})
                         .out[0]);
  EXPECT_NE(h.metrics.Render().find("specd:engine_step_failures_total 1"), std::string::npos);
}

// The prefix cache's counters go on across an engine rebuild (whose store starts at zero, and
// whose engine may sit at the freed one's address): they count exactly the prompt tokens looked
// up and found, never going down or wrapping.
TEST(Batcher, PrefixCacheCountersSurviveAnEngineRebuild) {
  Harness h(BatcherOptions{4, 4, "draft", 2}, /*prefix_entries=*/8);
  ASSERT_TRUE(h.batcher.Start().ok());
  auto metric = [&](const std::string& name) {
    const std::string m = h.metrics.Render();
    const std::regex re(name + " ([0-9.e+]+)");
    std::smatch mm;
    return std::regex_search(m, mm, re) ? std::stod(mm[1]) : -1.0;
  };
  int64_t looked_up = 0, found = 0;
  for (int i = 0; i < 4; ++i) {  // the same prompt four times: the second step fails (engine rebuilt)
    auto [st, s] = h.Submit(Request(Prompt(0), 6));
    ASSERT_TRUE(st.ok());
    ASSERT_TRUE(s->WaitEnd());
    looked_up += static_cast<int64_t>(Prompt(0).size());
    if (s->outcome) found += static_cast<int64_t>(s->outcome->cached_prompt_tokens);
  }
  EXPECT_EQ(h.engines_built.load(), 2);
  EXPECT_GT(found, 0) << "after the rebuild the prompt was stored again and found";
  for (int i = 0; i < 50 && metric("specd:prefix_cache_queries_total") != static_cast<double>(looked_up); ++i) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(metric("specd:prefix_cache_queries_total"), static_cast<double>(looked_up));
  EXPECT_EQ(metric("specd:prefix_cache_hits_total"), static_cast<double>(found));
}

// Shutdown never leaves a request open: draining refuses new ones, Stop fails what is left.
TEST(Batcher, DrainRefusesAndStopEndsEveryRequest) {
  Harness h(BatcherOptions{1, 8, "draft", 0});
  ASSERT_TRUE(h.batcher.Start().ok());
  std::vector<std::shared_ptr<Seen>> seen;
  for (int i = 0; i < 4; ++i) {
    auto [st, s] = h.Submit(Request(Prompt(i), 400));
    ASSERT_TRUE(st.ok());
    seen.push_back(s);
  }
  h.batcher.BeginDrain();
  auto [late, slate] = h.Submit(Request(Prompt(5), 8));
  EXPECT_EQ(late.code(), StatusCode::kUnavailable);
  h.batcher.CancelAll(Status(StatusCode::kUnavailable, "server shut down before the request finished"));
  h.batcher.Stop();
  for (auto& s : seen) {
    ASSERT_TRUE(s->WaitEnd(1s));
    if (s->outcome) continue;  // the first one may have finished before the cancel
    ASSERT_TRUE(s->failure.has_value());
    EXPECT_EQ(s->failure->code(), StatusCode::kUnavailable);
  }
  EXPECT_TRUE(h.batcher.Idle());
}

// Requests queued on a batcher that never started are ended when it is stopped.
TEST(Batcher, StopWithoutStartEndsQueuedRequests) {
  auto seen = std::make_shared<Seen>();
  {
    Harness h(BatcherOptions{1, 8, "draft", 0});
    auto [st, s] = h.Submit(Request(Prompt(0), 8));
    ASSERT_TRUE(st.ok());
    seen = s;
  }
  ASSERT_EQ(seen->ends, 1);
  ASSERT_TRUE(seen->failure.has_value());
  EXPECT_EQ(seen->failure->code(), StatusCode::kUnavailable);
}

// Many client threads at once (what gRPC's threads do): submits, aborts, cancels and wakes race
// with the batcher thread. Every request ends exactly once (the sink checks it), none is lost,
// and the batcher is idle afterwards. Under ThreadSanitizer (scripts/test.sh) this is the race check.
TEST(Batcher, ManyThreadsSubmitAbortAndCancelAtOnce) {
  Harness h(BatcherOptions{4, 64, "draft", 0});
  ASSERT_TRUE(h.batcher.Start().ok());
  constexpr int kThreads = 6, kPerThread = 8;
  std::mutex mu;
  std::vector<std::shared_ptr<Seen>> accepted;
  std::atomic<int> refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const std::string id = "t" + std::to_string(t) + "-" + std::to_string(i);
        auto [st, s] = h.Submit(Request(Prompt(t * kPerThread + i), 6 + (i % 5) * 10, id));
        if (!st.ok()) {
          ++refused;
          continue;
        }
        {
          std::lock_guard lk(mu);
          accepted.push_back(s);
        }
        if (i % 4 == 1) h.batcher.Abort(id);
        if (i % 4 == 2) {
          s->cancel = 1;
          h.batcher.Wake();
        }
        (void)h.batcher.Idle();
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(refused.load(), 0);
  ASSERT_EQ(accepted.size(), static_cast<size_t>(kThreads * kPerThread));
  int finished = 0, failed = 0;
  for (auto& s : accepted) {
    ASSERT_TRUE(s->WaitEnd());
    std::lock_guard lk(s->mu);
    EXPECT_EQ(s->ends, 1);
    if (s->outcome) ++finished;
    if (s->failure) {
      ++failed;
      EXPECT_EQ(s->failure->code(), StatusCode::kCancelled) << s->failure->ToString();
    }
  }
  EXPECT_EQ(finished + failed, kThreads * kPerThread);
  for (int i = 0; i < 200 && !h.batcher.Idle(); ++i) std::this_thread::sleep_for(5ms);
  EXPECT_TRUE(h.batcher.Idle());
}

}  // namespace
}  // namespace specd::serve
