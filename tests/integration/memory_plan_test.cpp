// The memory plan through the daemon (docs/memory.md): ModelInfo and /metrics carry it; a device
// budget (simulated on the CPU backend with --debug-device-memory) shrinks the KV pool to what is
// left, requests still run, and a budget that cannot hold one sequence stops startup with the plan.
#include <gtest/gtest.h>

#include "harness.h"

namespace specd::itest {
namespace {

uint64_t Part(const v1::ModelInfo& info, const std::string& name) {
  for (const auto& p : info.memory_plan()) {
    if (p.name() == name) return p.bytes();
  }
  return 0;
}

TEST(MemoryPlanOverGrpc, ReportedAndSizedByTheBudget) {
  uint64_t full_total = 0;
  {
    auto srv = Server::Start({});
    ASSERT_TRUE(srv);
    const v1::ModelInfo info = srv->Info();
    EXPECT_EQ(info.memory_budget_bytes(), 0u) << "the CPU backend has no device budget";
    EXPECT_EQ(info.kv_cache_tokens(), uint64_t{info.max_batch()} * info.max_context());
    for (const char* p : {"target weights", "KV pool (requests)", "GDN state (slots)", "verify log", "forward workspace"}) {
      EXPECT_GT(Part(info, p), 0u) << p;
    }
    for (const auto& p : info.memory_plan()) full_total += p.bytes();
    const std::string m = srv->Metrics();
    EXPECT_NE(m.find("specd:memory_plan_bytes{part=\"target weights\"} " + std::to_string(Part(info, "target weights"))),
              std::string::npos);
  }
  // A device 30 % smaller than the full plan needs (at the default fraction 0.9): the pool shrinks.
  const uint64_t device = full_total * 7 / 10 * 10 / 9;
  auto srv = Server::Start({"--debug-device-memory", std::to_string(device)});
  ASSERT_TRUE(srv);
  const v1::ModelInfo info = srv->Info();
  EXPECT_GT(info.memory_budget_bytes(), 0u);
  EXPECT_LT(info.kv_cache_tokens(), uint64_t{info.max_batch()} * info.max_context());
  EXPECT_GE(info.kv_cache_tokens(), info.max_context());
  uint64_t total = 0;
  for (const auto& p : info.memory_plan()) total += p.bytes();
  EXPECT_LE(total, info.memory_budget_bytes());
  EXPECT_NE(srv->Metrics().find("specd:memory_budget_bytes " + std::to_string(info.memory_budget_bytes())),
            std::string::npos);
  const StreamResult r = Generate(*srv->Stub(), IdsRequest(FixtureIds("../demo/refs.safetensors", "prompt_ids"), 8));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.ids.size(), 8u);

  const CommandResult tiny = RunCommand(SpecdBinary(), {"serve", "--port", "0", "--debug-device-memory", "8M"});
  EXPECT_NE(tiny.exit_code, 0);
  EXPECT_NE(tiny.err.find("the memory plan does not fit"), std::string::npos) << tiny.err;
  EXPECT_NE(tiny.err.find("KV pool (requests)"), std::string::npos) << tiny.err;
  // An explicit pool larger than the budget allows is refused, not shrunk.
  const CommandResult fixed = RunCommand(
      SpecdBinary(), {"serve", "--port", "0", "--debug-device-memory", std::to_string(device), "--kv-cache-tokens", "65536"});
  EXPECT_NE(fixed.exit_code, 0);
  EXPECT_NE(fixed.err.find("over the"), std::string::npos) << fixed.err;
}

}  // namespace
}  // namespace specd::itest
