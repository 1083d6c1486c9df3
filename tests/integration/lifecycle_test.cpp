// A request's slot comes back however it ends: client cancellation, deadline, Abort. And the
// queue bound holds: past --max-batch + --max-queue requests get RESOURCE_EXHAUSTED.
#include <thread>

#include <gtest/gtest.h>

#include "harness.h"

namespace specd::itest {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// ~4000 tokens take seconds on the fixture: a request that is certainly still running when the
// test acts on it.
v1::GenerateRequest LongRequest() {
  return IdsRequest(FixtureIds("dense/refs.safetensors", "prompt_ids"), 4000);
}

std::unique_ptr<Server> StartFixture(std::vector<std::string> extra = {}) {
  std::vector<std::string> args{"--model", FixtureDir("dense/model"), "--draft", FixtureDir("draft_near/model")};
  args.insert(args.end(), extra.begin(), extra.end());
  return Server::Start(args);
}

// Reads until the first message with tokens arrives: the request holds a slot.
bool ReadFirst(grpc::ClientReader<v1::GenerateResponse>& reader) {
  v1::GenerateResponse m;
  while (reader.Read(&m)) {
    if (m.token_ids_size() > 0) return true;
  }
  return false;
}

TEST(Lifecycle, ClientCancelMidStreamFreesTheSlot) {
  auto srv = StartFixture();
  ASSERT_TRUE(srv);
  auto stub = srv->Stub();
  grpc::ClientContext ctx;
  auto reader = stub->Generate(&ctx, LongRequest());
  ASSERT_TRUE(ReadFirst(*reader));
  EXPECT_EQ(srv->WaitMetric("specd:cache_slots_in_use", 1, seconds(3)), 1);
  ctx.TryCancel();
  v1::GenerateResponse m;
  while (reader->Read(&m)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(srv->WaitMetric("specd:cache_slots_in_use", 0, seconds(3)), 0);
  EXPECT_EQ(srv->WaitMetric("specd:request_failure_total{code=\"CANCELLED\"}", 1, seconds(3)), 1);
  EXPECT_EQ(srv->Metric("specd:num_requests_running"), 0);
  // The server still serves, with the slot reusable.
  const StreamResult r = Generate(*stub, IdsRequest({5, 6, 7}, 8));
  EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.ids.size(), 8u);
}

TEST(Lifecycle, DeadlineExpiryFreesTheSlot) {
  auto srv = StartFixture();
  ASSERT_TRUE(srv);
  auto stub = srv->Stub();
  const auto t0 = std::chrono::steady_clock::now();
  const StreamResult r = Generate(*stub, LongRequest(), /*timeout_ms=*/500);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_GT(r.ids.size(), 0u) << "tokens should have streamed before the deadline";
  EXPECT_LT(std::chrono::steady_clock::now() - t0, seconds(3));
  EXPECT_EQ(srv->WaitMetric("specd:cache_slots_in_use", 0, seconds(3)), 0);
  EXPECT_EQ(srv->WaitMetric("specd:request_failure_total{code=\"DEADLINE_EXCEEDED\"}", 1, seconds(3)), 1);
}

TEST(Lifecycle, AbortEndsTheStreamWithFinishReasonAbort) {
  auto srv = StartFixture();
  ASSERT_TRUE(srv);
  auto stub = srv->Stub();
  auto req = LongRequest();
  req.set_request_id("abort-me");
  grpc::ClientContext ctx;
  auto reader = stub->Generate(&ctx, req);
  ASSERT_TRUE(ReadFirst(*reader));
  {
    grpc::ClientContext actx;
    v1::AbortRequest a;
    a.set_request_id("abort-me");
    v1::AbortResponse resp;
    ASSERT_TRUE(stub->Abort(&actx, a, &resp).ok());
    EXPECT_TRUE(resp.found());
  }
  v1::GenerateResponse m, last;
  while (reader->Read(&m)) last = m;
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_ABORT);
  EXPECT_EQ(last.request_id(), "abort-me");
  EXPECT_LT(last.usage().completion_tokens(), 4000u);
  EXPECT_EQ(srv->WaitMetric("specd:cache_slots_in_use", 0, seconds(3)), 0);
  // Unknown ids are reported, not an error.
  grpc::ClientContext actx;
  v1::AbortRequest a;
  a.set_request_id("abort-me");
  v1::AbortResponse resp;
  ASSERT_TRUE(stub->Abort(&actx, a, &resp).ok());
  EXPECT_FALSE(resp.found());
}

TEST(Lifecycle, QueueFullIsResourceExhausted) {
  auto srv = StartFixture({"--max-batch", "1", "--max-queue", "1"});
  ASSERT_TRUE(srv);
  auto stub = srv->Stub();
  grpc::ClientContext running_ctx, queued_ctx;
  auto running = stub->Generate(&running_ctx, LongRequest());
  ASSERT_TRUE(ReadFirst(*running));  // holds the only slot
  auto queued = stub->Generate(&queued_ctx, LongRequest());
  ASSERT_EQ(srv->WaitMetric("specd:num_requests_waiting", 1, seconds(3)), 1);

  const StreamResult rejected = Generate(*stub, IdsRequest({5, 6, 7}, 4));
  EXPECT_EQ(rejected.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(rejected.status.error_message().find("max-queue"), std::string::npos) << rejected.status.error_message();

  // Cancel both: the queued one leaves the queue, the running one frees its slot.
  queued_ctx.TryCancel();
  running_ctx.TryCancel();
  v1::GenerateResponse m;
  while (queued->Read(&m)) {
  }
  while (running->Read(&m)) {
  }
  EXPECT_EQ(queued->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(running->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(srv->WaitMetric("specd:num_requests_waiting", 0, seconds(3)), 0);
  EXPECT_EQ(srv->WaitMetric("specd:cache_slots_in_use", 0, seconds(3)), 0);
  const StreamResult after = Generate(*stub, IdsRequest({5, 6, 7}, 4));
  EXPECT_TRUE(after.status.ok()) << after.status.error_message();
}

TEST(Lifecycle, DuplicateInFlightRequestIdIsRejected) {
  auto srv = StartFixture();
  ASSERT_TRUE(srv);
  auto stub = srv->Stub();
  auto req = LongRequest();
  req.set_request_id("same");
  grpc::ClientContext ctx;
  auto reader = stub->Generate(&ctx, req);
  ASSERT_TRUE(ReadFirst(*reader));
  auto dup = IdsRequest({5, 6}, 4);
  dup.set_request_id("same");
  EXPECT_EQ(Generate(*stub, dup).status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  ctx.TryCancel();
  v1::GenerateResponse m;
  while (reader->Read(&m)) {
  }
  (void)reader->Finish();
}

// Server-assigned ids (what Abort takes) are unguessable: 128 random bits, never a counter.
TEST(Lifecycle, ServerAssignedRequestIdsAreRandom) {
  auto srv = StartFixture();
  ASSERT_TRUE(srv);
  auto stub = srv->Stub();
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    const StreamResult r = Generate(*stub, IdsRequest({5, 6, 7}, 2));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    const std::string id = r.final_msg.request_id();
    ASSERT_EQ(id.size(), 6u + 32u) << id;
    EXPECT_EQ(id.rfind("specd-", 0), 0u) << id;
    EXPECT_EQ(id.find_first_not_of("0123456789abcdef", 6), std::string::npos) << id;
    for (const auto& other : ids) EXPECT_NE(id, other);
    ids.push_back(id);
  }
}

// A failed engine step fails only what was in flight (INTERNAL), and the server keeps serving
// with a fresh engine: later requests are exact again.
TEST(Lifecycle, EngineStepFailureFailsInFlightAndServingGoesOn) {
  auto srv = StartFixture({"--debug-fail-step", "3"});
  ASSERT_TRUE(srv);
  auto stub = srv->Stub();
  const StreamResult failed = Generate(*stub, LongRequest());
  EXPECT_EQ(failed.status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_NE(failed.status.error_message().find("injected failure"), std::string::npos)
      << failed.status.error_message();
  EXPECT_EQ(srv->WaitMetric("specd:engine_step_failures_total", 1, seconds(3)), 1);
  EXPECT_EQ(srv->WaitMetric("specd:cache_slots_in_use", 0, seconds(3)), 0);
  const StreamResult r = Generate(*stub, IdsRequest(FixtureIds("dense/refs.safetensors", "prompt_ids"), 40));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.ids, FixtureIds("dense/refs.safetensors", "greedy_ids"));
}

// The device (here: host) running out of memory mid-step is RESOURCE_EXHAUSTED for the requests
// in that step, counted, and the server keeps serving: it used to be an uncaught std::bad_alloc
// that ended the daemon.
TEST(Lifecycle, AllocationFailureIsResourceExhaustedAndServingGoesOn) {
  auto srv = StartFixture({"--debug-fail-alloc", "300"});
  ASSERT_TRUE(srv);
  auto stub = srv->Stub();
  const StreamResult failed = Generate(*stub, LongRequest());
  EXPECT_EQ(failed.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << failed.status.error_message();
  EXPECT_NE(failed.status.error_message().find("memory exhausted"), std::string::npos)
      << failed.status.error_message();
  EXPECT_EQ(srv->WaitMetric("specd:allocation_failures_total", 1, seconds(3)), 1);
  EXPECT_EQ(srv->WaitMetric("specd:request_failure_total{code=\"RESOURCE_EXHAUSTED\"}", 1, seconds(3)), 1);
  EXPECT_EQ(srv->WaitMetric("specd:cache_slots_in_use", 0, seconds(3)), 0);
  const StreamResult r = Generate(*stub, IdsRequest(FixtureIds("dense/refs.safetensors", "prompt_ids"), 40));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.ids, FixtureIds("dense/refs.safetensors", "greedy_ids"));
}

}  // namespace
}  // namespace specd::itest
