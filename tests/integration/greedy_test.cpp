// Greedy output over gRPC equals the fixture's greedy_ids (HF transformers' greedy decode of the
// dense fixture), for every drafter: speculation must not change greedy output.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "harness.h"

namespace specd::itest {
namespace {

class GreedyOverGrpc : public ::testing::TestWithParam<std::vector<std::string>> {};

TEST_P(GreedyOverGrpc, MatchesFixtureGreedyIds) {
  std::vector<std::string> args{"--model", FixtureDir("dense/model")};
  args.insert(args.end(), GetParam().begin(), GetParam().end());
  auto srv = Server::Start(args);
  ASSERT_TRUE(srv);
  const auto prompt = FixtureIds("dense/refs.safetensors", "prompt_ids");
  const auto want = FixtureIds("dense/refs.safetensors", "greedy_ids");
  ASSERT_EQ(want.size(), 40u);
  auto stub = srv->Stub();
  const StreamResult r = Generate(*stub, IdsRequest(prompt, 40));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.ids, want);
  ASSERT_TRUE(r.has_final);
  EXPECT_EQ(r.final_msg.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(r.final_msg.usage().prompt_tokens(), prompt.size());
  EXPECT_EQ(r.final_msg.usage().completion_tokens(), 40u);
  EXPECT_FALSE(r.final_msg.request_id().empty());
  const auto& st = r.final_msg.stats();
  EXPECT_GT(st.verify_steps(), 0u);
  if (GetParam().back() != "none") {
    EXPECT_GT(st.draft_tokens(), 0u) << "the drafter proposed nothing";
    // Speculation pays off only if some drafts are kept; both fixture drafters manage that here.
    EXPECT_LT(st.verify_steps(), 40u);
  }
}

INSTANTIATE_TEST_SUITE_P(Drafters, GreedyOverGrpc,
                         ::testing::Values(std::vector<std::string>{"--draft", FixtureDir("draft_near/model"),
                                                                    "--drafter", "draft"},
                                           std::vector<std::string>{"--drafter", "ngram"},
                                           std::vector<std::string>{"--drafter", "none"}),
                         [](const auto& info) { return info.param.back(); });

// The checkpoint's own MTP head as the drafter: greedy output still equals transformers' greedy
// ids, the head drafts (its weights are random, so its drafts are rejected), and a request may
// name it or turn it off.
TEST(GreedyOverGrpcMtp, MatchesFixtureGreedyIds) {
  auto srv = Server::Start({"--model", MtpCheckpointDir("dense"), "--drafter", "mtp", "--k", "3"});
  ASSERT_TRUE(srv);
  const auto prompt = FixtureIds("dense/refs.safetensors", "prompt_ids");
  const auto want = FixtureIds("dense/refs.safetensors", "greedy_ids");
  auto stub = srv->Stub();
  StreamResult r = Generate(*stub, IdsRequest(prompt, 40));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.ids, want);
  EXPECT_GT(r.final_msg.stats().draft_tokens(), 0u) << "the head proposed nothing";
  for (const char* d : {"mtp", "none"}) {
    auto req = IdsRequest(prompt, 40);
    req.mutable_speculation()->set_drafter(d);
    r = Generate(*stub, req);
    ASSERT_TRUE(r.status.ok()) << d << ": " << r.status.error_message();
    EXPECT_EQ(r.ids, want) << d;
    EXPECT_EQ(r.final_msg.stats().draft_tokens() > 0, std::string(d) == "mtp") << d;
  }
}

// The embedded demo target carries an MTP head trained with it: `specd serve --drafter mtp` with no
// model serves it, with transformers' greedy ids and drafts that are kept.
TEST(GreedyOverGrpcMtp, EmbeddedDemoHead) {
  auto srv = Server::Start({"--drafter", "mtp", "--k", "3"});
  ASSERT_TRUE(srv);
  const auto prompt = FixtureIds("../demo/refs.safetensors", "prompt_ids");
  const auto want = FixtureIds("../demo/refs.safetensors", "greedy_ids");
  auto stub = srv->Stub();
  const StreamResult r = Generate(*stub, IdsRequest(prompt, static_cast<uint32_t>(want.size())));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.ids, want);
  EXPECT_GT(r.final_msg.stats().acceptance_rate(), 0.2) << "a trained head's drafts are kept";
}

// A checkpoint without a head stops at startup, saying so.
TEST(GreedyOverGrpcMtp, CheckpointWithoutHeadStopsAtStartup) {
  const CommandResult a = RunCommand(SpecdBinary(), {"serve", "--model", FixtureDir("dense/model"), "--drafter", "mtp"});
  EXPECT_NE(a.exit_code, 0);
  EXPECT_NE(a.err.find("--drafter mtp"), std::string::npos) << a.err;
}

// Per-request k = 0 turns speculation off for that request only; the output stays the same.
TEST(GreedyOverGrpcPerRequest, KZeroAndDrafterNone) {
  auto srv = Server::Start({"--model", FixtureDir("dense/model"), "--draft", FixtureDir("draft_near/model")});
  ASSERT_TRUE(srv);
  const auto prompt = FixtureIds("dense/refs.safetensors", "prompt_ids");
  const auto want = FixtureIds("dense/refs.safetensors", "greedy_ids");
  auto stub = srv->Stub();
  auto req = IdsRequest(prompt, 40);
  req.mutable_speculation()->set_k(0);
  StreamResult r = Generate(*stub, req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.ids, want);
  EXPECT_EQ(r.final_msg.stats().draft_tokens(), 0u);
  EXPECT_EQ(r.final_msg.stats().verify_steps(), 39u);  // the first token comes from the prefill

  req = IdsRequest(prompt, 40);
  req.mutable_speculation()->set_drafter("none");
  r = Generate(*stub, req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.ids, want);
  EXPECT_EQ(r.final_msg.stats().draft_tokens(), 0u);

  req = IdsRequest(prompt, 40);
  req.mutable_speculation()->set_drafter("draft");
  req.mutable_speculation()->set_k(7);
  r = Generate(*stub, req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.ids, want);
  EXPECT_GE(r.final_msg.stats().per_position_acceptance_size(), 5);  // k = 7 drafts were proposed
}

// `specd-client generate --json` prints exactly what `specd generate --json` prints.
TEST(ClientJson, SameObjectAsOfflineGenerate) {
  auto srv = Server::Start({"--model", FixtureDir("dense/model"), "--draft", FixtureDir("draft_near/model")});
  ASSERT_TRUE(srv);
  const std::vector<std::string> common{"--prompt-ids", "84,234,379,460,70,384,287,462,37,310", "--max-tokens",
                                        "32", "--ignore-eos", "--k", "4", "--json"};
  std::vector<std::string> offline{"generate", "--model", FixtureDir("dense/model"), "--draft",
                                   FixtureDir("draft_near/model")};
  offline.insert(offline.end(), common.begin(), common.end());
  std::vector<std::string> online{"--address", srv->address(), "generate"};
  online.insert(online.end(), common.begin(), common.end());
  const CommandResult a = RunCommand(SpecdBinary(), offline);
  const CommandResult b = RunCommand(ClientBinary(), online);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  const auto ja = nlohmann::json::parse(a.out), jb = nlohmann::json::parse(b.out);
  EXPECT_EQ(ja, jb);
  EXPECT_EQ(jb["ids"].size(), 32u);
  for (const char* k : {"ids", "text", "finish_reason", "stats"}) EXPECT_TRUE(jb.contains(k)) << k;
  EXPECT_EQ(jb.size(), 4u);
  for (const char* k : {"draft_tokens", "accepted_tokens", "verify_steps", "acceptance_rate",
                        "mean_acceptance_length", "per_position_acceptance"}) {
    EXPECT_TRUE(jb["stats"].contains(k)) << k;
  }
}

}  // namespace
}  // namespace specd::itest
