// The prefix cache through the daemon (`--prefix-cache on`, embedded demo pair): a chat's second
// turn reuses what the first consumed (usage.cached_prompt_tokens), gives the ids an uncached
// request gives, and the metrics count the tokens looked up and found.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "harness.h"

namespace specd::itest {
namespace {

TEST(PrefixCacheOverGrpc, SecondTurnReusesTheFirst) {
  auto srv = Server::Start({"--prefix-cache", "on", "--drafter", "draft", "--k", "3", "--prefill-chunk", "64"});
  ASSERT_TRUE(srv);
  auto stub = srv->Stub();
  v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->GetModelInfo(&ctx, {}, &info).ok());
  }
  EXPECT_TRUE(info.prefix_cache());
  EXPECT_EQ(info.prefix_cache_entries(), 64u);
  EXPECT_EQ(info.prefix_cache_tokens(), 4 * info.max_context());
  const auto prompt = FixtureIds("../demo/refs.safetensors", "prompt_ids");
  StreamResult first = Generate(*stub, IdsRequest(prompt, 24));
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  EXPECT_EQ(first.final_msg.usage().cached_prompt_tokens(), 0u);
  // The next turn: the first prompt, its reply, new tokens.
  std::vector<int32_t> next = prompt;
  next.insert(next.end(), first.ids.begin(), first.ids.end());
  next.insert(next.end(), prompt.begin(), prompt.begin() + 7);
  v1::GenerateRequest uncached = IdsRequest(next, 24);
  uncached.set_prefix_cache(false);
  const StreamResult want = Generate(*stub, uncached);
  ASSERT_TRUE(want.status.ok()) << want.status.error_message();
  EXPECT_EQ(want.final_msg.usage().cached_prompt_tokens(), 0u) << "a request may opt out";
  const StreamResult got = Generate(*stub, IdsRequest(next, 24));
  ASSERT_TRUE(got.status.ok()) << got.status.error_message();
  EXPECT_EQ(got.ids, want.ids);
  EXPECT_EQ(got.final_msg.usage().cached_prompt_tokens(), prompt.size() + first.ids.size() - 1)
      << "everything the first turn consumed";
  EXPECT_EQ(got.final_msg.usage().prompt_tokens(), next.size());
  const double hits = srv->WaitMetric("specd:prefix_cache_hits_total", static_cast<double>(prompt.size() + 23),
                                      std::chrono::seconds(3));
  EXPECT_EQ(hits, static_cast<double>(prompt.size() + 23));
  // Looked up: the first prompt and the cached turn's (the opted-out one was not).
  EXPECT_EQ(srv->Metric("specd:prefix_cache_queries_total"), static_cast<double>(prompt.size() + next.size()));
  EXPECT_GT(srv->Metric("specd:prefix_cache_bytes"), 0);
}


// `specd-client bench --multi-turn`: each turn after the first reuses everything the session's
// previous turn consumed (prompt + reply), and the table and JSON say so.
// On by default; one byte budget splits itself into entries and KV rows (ModelInfo tells the
// plan, within the budget); a budget that holds no entry stops the daemon at startup, saying so;
// --prefix-cache off turns it off.
TEST(PrefixCacheOverGrpc, DefaultOnAndOneByteBudget) {
  auto info_of = [](const std::vector<std::string>& args) {
    v1::ModelInfo info;
    auto srv = Server::Start(args);
    EXPECT_TRUE(srv);
    if (!srv) return info;
    grpc::ClientContext ctx;
    EXPECT_TRUE(srv->Stub()->GetModelInfo(&ctx, {}, &info).ok());
    return info;
  };
  EXPECT_TRUE(info_of({}).prefix_cache()) << "on by default";
  EXPECT_FALSE(info_of({"--prefix-cache", "off"}).prefix_cache());
  const v1::ModelInfo b = info_of({"--prefix-cache-bytes", "32M"});
  ASSERT_TRUE(b.prefix_cache());
  EXPECT_GT(b.prefix_cache_entries(), 64u) << "a budget alone is not capped at the default 64 entries";
  EXPECT_GT(b.prefix_cache_tokens(), 128u * b.prefix_cache_entries()) << "every entry has an interval of KV rows";
  EXPECT_EQ(info_of({"--prefix-cache-bytes", "32M", "--prefix-cache-entries", "5"}).prefix_cache_entries(), 5u);
  const CommandResult tiny = RunCommand(SpecdBinary(), {"serve", "--port", "0", "--prefix-cache-bytes", "1k"});
  EXPECT_NE(tiny.exit_code, 0);
  EXPECT_NE(tiny.err.find("hold no entry"), std::string::npos) << tiny.err;
}

TEST(PrefixCacheOverGrpc, MultiTurnBench) {
  auto srv = Server::Start({"--prefix-cache", "on", "--drafter", "ngram"});
  ASSERT_TRUE(srv);
  const std::string json = ::testing::TempDir() + "/multiturn.json";
  const CommandResult r = RunCommand(ClientBinary(), {"--address", srv->address(), "bench", "--multi-turn", "3",
                                                      "--sessions", "2", "--system-tokens", "40", "--turn-tokens",
                                                      "8", "--max-tokens", "6", "--json-out", json});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  std::ifstream f(json);
  const auto j = nlohmann::json::parse(f);
  ASSERT_EQ(j["per_turn"].size(), 3u);
  EXPECT_EQ(j["per_turn"][0]["prompt_tokens_mean"], 48.0);
  EXPECT_EQ(j["per_turn"][1]["prompt_tokens_mean"], 48.0 + 6 + 8);
  // Turn 2 finds turn 1's prompt + reply but its last (pending) token: 48 + 6 - 1.
  EXPECT_EQ(j["per_turn"][1]["cached_tokens_mean"], 53.0);
  EXPECT_EQ(j["per_turn"][2]["cached_tokens_mean"], 53.0 + 14);
}

}  // namespace
}  // namespace specd::itest
