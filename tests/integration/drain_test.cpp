// SIGTERM drains: health NOT_SERVING, new requests UNAVAILABLE, the in-flight request completes,
// exit code 0. Past the grace period, what is left is cancelled and the server still exits 0.
#include <signal.h>

#include <thread>

#include <gtest/gtest.h>

#include "grpc/health/v1/health.grpc.pb.h"
#include "harness.h"

namespace specd::itest {
namespace {

using std::chrono::seconds;

grpc::health::v1::HealthCheckResponse::ServingStatus Health(const Server& srv) {
  auto h = grpc::health::v1::Health::NewStub(grpc::CreateChannel(srv.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(2));
  grpc::health::v1::HealthCheckResponse resp;
  if (!h->Check(&ctx, {}, &resp).ok()) return grpc::health::v1::HealthCheckResponse::UNKNOWN;
  return resp.status();
}

TEST(Drain, SigtermFinishesInFlightRefusesNewExitsZero) {
  auto srv = Server::Start({"--model", FixtureDir("dense/model"), "--draft", FixtureDir("draft_near/model")});
  ASSERT_TRUE(srv);
  ASSERT_EQ(Health(*srv), grpc::health::v1::HealthCheckResponse::SERVING);
  auto stub = srv->Stub();
  const auto prompt = FixtureIds("dense/refs.safetensors", "prompt_ids");
  grpc::ClientContext ctx;
  auto reader = stub->Generate(&ctx, IdsRequest(prompt, 800));
  v1::GenerateResponse m;
  std::vector<int32_t> ids;
  ASSERT_TRUE(reader->Read(&m));
  ids.insert(ids.end(), m.token_ids().begin(), m.token_ids().end());

  srv->Signal(SIGTERM);
  // Draining: NOT_SERVING and UNAVAILABLE for new work, while the first request still streams.
  auto status = Health(*srv);
  for (int i = 0; i < 100 && status == grpc::health::v1::HealthCheckResponse::SERVING; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    status = Health(*srv);
  }
  EXPECT_EQ(status, grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  const StreamResult refused = Generate(*stub, IdsRequest(prompt, 4));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.status.error_message();

  v1::GenerateResponse last;
  while (reader->Read(&m)) {
    ids.insert(ids.end(), m.token_ids().begin(), m.token_ids().end());
    last = m;
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(ids.size(), 800u);
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_LENGTH);
  // The in-flight request matches the fixture where the fixture has a reference.
  const auto want = FixtureIds("dense/refs.safetensors", "greedy_ids");
  EXPECT_TRUE(std::equal(want.begin(), want.end(), ids.begin()));
  EXPECT_EQ(srv->Wait(seconds(10)), 0) << srv->Log();
}

TEST(Drain, GraceExpiryCancelsWhatIsLeft) {
  auto srv = Server::Start({"--model", FixtureDir("dense/model"), "--drafter", "none", "--grace-seconds", "0.2"});
  ASSERT_TRUE(srv);
  auto stub = srv->Stub();
  grpc::ClientContext ctx;
  auto reader = stub->Generate(&ctx, IdsRequest(FixtureIds("dense/refs.safetensors", "prompt_ids"), 4000));
  v1::GenerateResponse m;
  ASSERT_TRUE(reader->Read(&m));
  const auto t0 = std::chrono::steady_clock::now();
  srv->Signal(SIGTERM);
  while (reader->Read(&m)) {
  }
  const grpc::Status st = reader->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_EQ(srv->Wait(seconds(10)), 0) << srv->Log();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, seconds(5));
}

}  // namespace
}  // namespace specd::itest
