// Operations: the metric names operators scrape, server reflection, the JSON config file, and
// `specd-client bench` end to end.
#include <fstream>

#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "harness.h"

namespace specd::itest {
namespace {

TEST(Ops, MetricsExposeTheDocumentedNames) {
  auto srv = Server::Start({"--model", FixtureDir("dense/model"), "--draft", FixtureDir("draft_near/model")});
  ASSERT_TRUE(srv);
  auto stub = srv->Stub();
  const StreamResult r = Generate(*stub, IdsRequest(FixtureIds("dense/refs.safetensors", "prompt_ids"), 40));
  ASSERT_TRUE(r.status.ok());
  // The gauges are published after the step that ended the request.
  ASSERT_EQ(srv->WaitMetric("specd:num_requests_running", 0, std::chrono::seconds(3)), 0);
  const std::string m = srv->Metrics();
  for (const char* name :
       {"specd:spec_decode_num_draft_tokens_total ", "specd:spec_decode_num_accepted_tokens_total ",
        "specd:spec_decode_num_accepted_tokens_per_pos{position=\"0\"} ", "specd:spec_decode_num_drafts_total ",
        "specd:request_success_total{finished_reason=\"length\"} 1", "specd:prompt_tokens_total 45",
        "specd:generation_tokens_total 40", "specd:time_to_first_token_seconds_bucket{le=\"+Inf\"} 1",
        "specd:inter_token_latency_seconds_count 39", "specd:e2e_request_latency_seconds_count 1",
        "specd:num_requests_waiting 0", "specd:num_requests_running 0", "specd:cache_slots_in_use 0", "specd:kv_cache_usage_perc 0"}) {
    EXPECT_NE(m.find(name), std::string::npos) << name << "\n" << m;
  }
  // The counters agree with the request's own statistics.
  const auto& st = r.final_msg.stats();
  EXPECT_EQ(srv->Metric("specd:spec_decode_num_draft_tokens_total"), static_cast<double>(st.draft_tokens()));
  EXPECT_EQ(srv->Metric("specd:spec_decode_num_accepted_tokens_total"), static_cast<double>(st.accepted_tokens()));
  EXPECT_EQ(srv->Metric("specd:spec_decode_num_accepted_tokens_per_pos{position=\"0\"}"),
            static_cast<double>(st.accepted_per_pos(0)));
}

// Lists services through grpc.reflection.v1alpha (what grpcurl and grpc_cli use), with a
// generic stub and a hand-encoded request: ServerReflectionRequest{list_services: ""}.
TEST(Ops, ServerReflectionListsTheServices) {
  auto srv = Server::Start({"--model", FixtureDir("dense/model"), "--drafter", "ngram"});
  ASSERT_TRUE(srv);
  grpc::GenericStub gs(grpc::CreateChannel(srv->address(), grpc::InsecureChannelCredentials()));
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  auto call = gs.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag;
  bool ok;
  auto step = [&](int t) {
    EXPECT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(tag, reinterpret_cast<void*>(static_cast<intptr_t>(t)));
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(step(1));
  const char req_bytes[] = {0x3a, 0x00};  // field 7 (list_services), empty string
  grpc::Slice slice(req_bytes, sizeof req_bytes);
  grpc::ByteBuffer req(&slice, 1);
  call->Write(req, reinterpret_cast<void*>(2));
  ASSERT_TRUE(step(2));
  grpc::ByteBuffer resp;
  call->Read(&resp, reinterpret_cast<void*>(3));
  ASSERT_TRUE(step(3));
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(resp.Dump(&slices).ok());
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_NE(bytes.find("specd.v1.Specd"), std::string::npos);
  EXPECT_NE(bytes.find("grpc.health.v1.Health"), std::string::npos);
  ctx.TryCancel();
  grpc::Status st;
  call->Finish(&st, reinterpret_cast<void*>(4));
  step(4);
}

TEST(Ops, ConfigFileWithFlagOverride) {
  const std::string path = ::testing::TempDir() + "/specd-serve-config.json";
  std::ofstream(path) << nlohmann::json{{"model", FixtureDir("dense/model")}, {"drafter", "ngram"},
                                         {"max_batch", 3}, {"max-queue", 7}, {"k", 2}}
                             .dump();
  auto srv = Server::Start({"--config", path, "--max-batch", "5"});
  ASSERT_TRUE(srv);
  const CommandResult i = RunCommand(ClientBinary(), {"--address", srv->address(), "info"});
  ASSERT_EQ(i.exit_code, 0) << i.err;
  const auto j = nlohmann::json::parse(i.out);
  EXPECT_EQ(j["drafter"], "ngram");
  EXPECT_EQ(j["max_batch"], 5) << "the flag wins over the file";
  EXPECT_EQ(j["max_queue"], 7);
  EXPECT_EQ(j["default_k"], 2);
  // Unknown keys are an error, not silently ignored.
  std::ofstream(path) << R"({"max_bach": 3})";
  const CommandResult bad = RunCommand(SpecdBinary(), {"serve", "--config", path});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("max"), std::string::npos) << bad.err;
}

TEST(Ops, ClientBenchRunsCleanAndWritesJson) {
  auto srv = Server::Start({"--model", FixtureDir("dense/model"), "--drafter", "ngram", "--max-batch", "4"});
  ASSERT_TRUE(srv);
  const std::string out = ::testing::TempDir() + "/specd-bench.json";
  const CommandResult b = RunCommand(ClientBinary(), {"--address", srv->address(), "bench", "--num-requests", "24",
                                               "--concurrency", "6", "--max-tokens", "16", "--ignore-eos",
                                               "--warmup", "2", "--json-out", out});
  ASSERT_EQ(b.exit_code, 0) << b.out << b.err;
  EXPECT_NE(b.out.find("requests/s"), std::string::npos) << b.out;
  std::ifstream f(out);
  const auto j = nlohmann::json::parse(f);
  EXPECT_EQ(j["requests"], 24);
  EXPECT_EQ(j["completed"], 24);
  EXPECT_EQ(j["errors"], 0);
  EXPECT_EQ(j["lost"], 0);
  EXPECT_EQ(j["output_tokens"], 24 * 16);
  for (const char* k : {"acceptance_rate", "mean_acceptance_length", "per_position_acceptance", "output_tokens_per_s",
                        "ttft_ms", "itl_ms", "e2e_ms"}) {
    EXPECT_TRUE(j.contains(k)) << k;
  }
  for (const char* k : {"p50", "p90", "p99"}) EXPECT_GT(j["e2e_ms"][k].get<double>(), 0) << k;
  // 24 measured + 2 warm-up requests reached the server.
  EXPECT_EQ(srv->Metric("specd:request_success_total{finished_reason=\"length\"}"), 26);
}

}  // namespace
}  // namespace specd::itest
