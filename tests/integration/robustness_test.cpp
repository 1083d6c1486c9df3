// Garbage on the gRPC port does not take the server down.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "grpc/health/v1/health.grpc.pb.h"
#include "harness.h"

namespace specd::itest {
namespace {

// Connects, writes `bytes`, reads whatever comes back for a moment, closes.
void SendRaw(int port, const std::string& bytes) {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  // The server may hang up on garbage before it has read all of it, and then a send fails with a
  // reset or a broken pipe (timing-dependent: seen once in a loaded local run). Hanging up is a
  // right answer, so that ends the sending; what is checked is the server's state afterwards.
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = ::send(s, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ASSERT_TRUE(errno == ECONNRESET || errno == EPIPE) << "send: " << std::strerror(errno);
      break;
    }
    sent += static_cast<size_t>(n);
  }
  timeval tv{0, 200000};
  ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  while (::recv(s, buf, sizeof buf, 0) > 0) {
  }
  ::close(s);
}

TEST(Robustness, GarbageBytesOnTheGrpcPort) {
  auto srv = Server::Start({"--model", FixtureDir("dense/model"), "--drafter", "ngram"});
  ASSERT_TRUE(srv);
  std::mt19937 rng(7);
  std::string noise(64 * 1024, '\0');
  for (auto& c : noise) c = static_cast<char>(rng());
  SendRaw(srv->port(), noise);
  SendRaw(srv->port(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  // A valid HTTP/2 preface followed by a malformed frame (length 2^24-1, unknown type).
  SendRaw(srv->port(), std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") + std::string("\xff\xff\xff\x42\x00\x00\x00\x00\x01", 9) +
                           noise.substr(0, 1000));
  // Half a preface, then hang up.
  SendRaw(srv->port(), "PRI * HTTP/2.0\r\n");

  auto health = grpc::health::v1::Health::NewStub(grpc::CreateChannel(srv->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  grpc::health::v1::HealthCheckResponse resp;
  ASSERT_TRUE(health->Check(&ctx, {}, &resp).ok());
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  auto stub = srv->Stub();
  const auto prompt = FixtureIds("dense/refs.safetensors", "prompt_ids");
  const StreamResult r = Generate(*stub, IdsRequest(prompt, 40));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.ids, FixtureIds("dense/refs.safetensors", "greedy_ids"));
}

// Idle connections to the metrics port (a slow or stuck scraper, a port scan) must not starve a
// real scrape: it used to wait for a worker thread behind them (4.7 s with 8 idle connections,
// a timeout with 50).
TEST(Robustness, MetricsAnswerPromptlyWithManyIdleConnections) {
  auto srv = Server::Start({"--model", FixtureDir("dense/model"), "--drafter", "ngram"});
  ASSERT_TRUE(srv);
  std::vector<int> idle;
  for (int i = 0; i < 100; ++i) {
    const int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(srv->metrics_port()));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    idle.push_back(s);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // let the server take them all
  for (int scrape = 0; scrape < 3; ++scrape) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string text = srv->Metrics();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_NE(text.find("specd:num_requests_running"), std::string::npos) << "scrape " << scrape << " failed";
    // The target is 100 ms; a loaded CI machine gets slack, the old behaviour took seconds.
    EXPECT_LT(ms, 1000.0) << "scrape " << scrape << " with 100 idle connections open";
    std::printf("[metrics] scrape %d with 100 idle connections: %.1f ms\n", scrape, ms);
  }
  for (int s : idle) ::close(s);
}

}  // namespace
}  // namespace specd::itest
