// `specd-client health` (grpc.health.v1 Check; exit 0 iff SERVING) and `info` (GetModelInfo).
#include <chrono>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "client/commands.h"
#include "client/common.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "specd/v1/specd.grpc.pb.h"

namespace specd::client {
namespace {

void SetTimeout(grpc::ClientContext& ctx, int64_t timeout_ms) {
  if (timeout_ms > 0) ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
}

}  // namespace

int RunHealth(const std::string& address, const std::string& service, int64_t timeout_ms) {
  auto stub = grpc::health::v1::Health::NewStub(MakeChannel(address));
  grpc::ClientContext ctx;
  SetTimeout(ctx, timeout_ms);
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  const grpc::Status st = stub->Check(&ctx, req, &resp);
  if (!st.ok()) {
    PrintStatus(st);
    return 1;
  }
  std::printf("%s\n", grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status()).c_str());
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

int RunInfo(const std::string& address, int64_t timeout_ms) {
  auto stub = v1::Specd::NewStub(MakeChannel(address));
  grpc::ClientContext ctx;
  SetTimeout(ctx, timeout_ms);
  v1::ModelInfo info;
  const grpc::Status st = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
  if (!st.ok()) {
    PrintStatus(st);
    return 1;
  }
  // Numbers as JSON numbers (protobuf's JSON mapping would quote the 64-bit ones).
  const nlohmann::json j = {
      {"model", info.model()},
      {"model_type", info.model_type()},
      {"vocab_size", info.vocab_size()},
      {"num_layers", info.num_layers()},
      {"hidden_size", info.hidden_size()},
      {"drafter", info.drafter()},
      {"drafters", std::vector<std::string>(info.drafters().begin(), info.drafters().end())},
      {"prefix_cache", info.prefix_cache()},
      {"prefix_cache_entries", info.prefix_cache_entries()},
      {"prefix_cache_tokens", info.prefix_cache_tokens()},
      {"draft_model", info.draft_model()},
      {"default_k", info.default_k()},
      {"max_k", info.max_k()},
      {"max_context", info.max_context()},
      {"device", info.device()},
      {"max_batch", info.max_batch()},
      {"max_queue", info.max_queue()},
      {"eos_token_ids", std::vector<int32_t>(info.eos_token_ids().begin(), info.eos_token_ids().end())},
      {"has_tokenizer", info.has_tokenizer()},
      {"version", info.version()},
  };
  std::puts(j.dump(2).c_str());
  return 0;
}

}  // namespace specd::client
