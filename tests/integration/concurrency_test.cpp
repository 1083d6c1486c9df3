// 64 concurrent streams, each equal to its own sequential reference: continuous batching must
// not mix sequences up, and batch composition must not change greedy or seeded output.
#include <algorithm>
#include <regex>
#include <thread>

#include <gtest/gtest.h>

#include "harness.h"

namespace specd::itest {
namespace {

std::vector<v1::GenerateRequest> Requests() {
  const auto fixture = FixtureIds("dense/refs.safetensors", "prompt_ids");
  const auto long_prompt = FixtureIds("dense/refs.safetensors", "long_prompt_ids");
  std::vector<v1::GenerateRequest> reqs;
  for (int i = 0; i < 64; ++i) {
    // Prompts of different lengths (so prefills and decodes share steps), a few long ones that
    // need several prefill chunks, and every 4th request sampled with its own seed.
    std::vector<int32_t> p;
    if (i % 16 == 5) {
      p = long_prompt;
    } else {
      const size_t len = 3 + static_cast<size_t>(i * 7) % 40;
      for (size_t j = 0; j < len; ++j) p.push_back(fixture[(j + static_cast<size_t>(i)) % fixture.size()]);
    }
    v1::GenerateRequest r = IdsRequest(p, 12 + static_cast<uint32_t>(i % 5) * 6);
    if (i % 4 == 3) {
      r.mutable_sampling()->set_temperature(0.8f);
      r.mutable_sampling()->set_top_p(0.95f);
      r.mutable_sampling()->set_seed(1000 + static_cast<uint64_t>(i));
    }
    reqs.push_back(r);
  }
  return reqs;
}

TEST(Concurrency, SixtyFourStreamsEachEqualToSequential) {
  // --prefill-chunk 64: the 150-token prompts take three steps to prefill while others decode.
  auto srv = Server::Start({"--model", FixtureDir("dense/model"), "--draft", FixtureDir("draft_near/model"),
                            "--max-batch", "64", "--max-queue", "64", "--prefill-chunk", "64",
                            "--log-level", "debug"});
  ASSERT_TRUE(srv);
  auto stub = srv->Stub();
  const auto reqs = Requests();
  std::vector<std::vector<int32_t>> seq(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    const StreamResult r = Generate(*stub, reqs[i]);
    ASSERT_TRUE(r.status.ok()) << i << ": " << r.status.error_message();
    ASSERT_EQ(r.ids.size(), reqs[i].sampling().max_tokens());
    seq[i] = r.ids;
  }
  std::vector<StreamResult> par(reqs.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < reqs.size(); ++i) {
    threads.emplace_back([&, i] { par[i] = Generate(*stub, reqs[i]); });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_TRUE(par[i].status.ok()) << i << ": " << par[i].status.error_message();
    EXPECT_EQ(par[i].ids, seq[i]) << "request " << i;
    EXPECT_TRUE(par[i].has_final);
  }
  // They really ran together: some step batched most of them (the debug log has one line per step).
  int widest = 0;
  const std::string log = srv->Log();
  const std::regex step_line("step: ([0-9]+) sequences");
  for (auto it = std::sregex_iterator(log.begin(), log.end(), step_line); it != std::sregex_iterator(); ++it) {
    widest = std::max(widest, std::stoi((*it)[1]));
  }
  EXPECT_GE(widest, 32);
  EXPECT_EQ(srv->WaitMetric("specd:cache_slots_in_use", 0, std::chrono::seconds(2)), 0);
  EXPECT_EQ(srv->Metric("specd:request_success_total{finished_reason=\"length\"}"), 128);
}

// A KV cache far smaller than --max-batch x --max-context: requests whose rows do not fit wait in
// the queue for finished requests' blocks (none fails, none is cut short, each equals its
// sequential result), and a request that could never fit is INVALID_ARGUMENT at once.
TEST(Concurrency, SmallKvCacheQueuesRequestsUntilTheirRowsFit) {
  // 256 rows = 16 blocks; each request below reserves up to 6, so at most a few run at once.
  auto srv = Server::Start({"--model", FixtureDir("dense/model"), "--draft", FixtureDir("draft_near/model"),
                            "--max-batch", "8", "--max-queue", "64", "--kv-cache-tokens", "256"});
  ASSERT_TRUE(srv);
  auto stub = srv->Stub();
  auto reqs = Requests();
  reqs.resize(24);  // includes 150-token prompts: 12 of the 16 blocks alone
  std::vector<std::vector<int32_t>> seq(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    const StreamResult r = Generate(*stub, reqs[i]);
    ASSERT_TRUE(r.status.ok()) << i << ": " << r.status.error_message();
    seq[i] = r.ids;
  }
  std::vector<StreamResult> par(reqs.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < reqs.size(); ++i) threads.emplace_back([&, i] { par[i] = Generate(*stub, reqs[i]); });
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_TRUE(par[i].status.ok()) << i << ": " << par[i].status.error_message();
    EXPECT_EQ(par[i].ids, seq[i]) << "request " << i;
  }
  // Every reservation went back: the KV gauge returns to 0.
  EXPECT_EQ(srv->WaitMetric("specd:kv_cache_usage_perc", 0, std::chrono::seconds(3)), 0);
  const StreamResult big = Generate(*stub, IdsRequest({1, 2, 3}, 300));
  EXPECT_EQ(big.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << big.status.error_message();
  EXPECT_NE(big.status.error_message().find("KV cache holds"), std::string::npos) << big.status.error_message();
}


// One server with three drafters side by side (`--drafter mtp,draft,ngram` on the embedded demo
// pair: the target's MTP head, the demo draft model, n-gram) and 64 concurrent streams, each
// naming mtp, draft, ngram, none or nothing (the default, mtp): every stream equals its plain
// ("none") result, each drafter drafts for its own requests and the metrics count them apart.
TEST(Concurrency, SixtyFourStreamsMixingDrafters) {
  auto srv = Server::Start({"--drafter", "mtp,draft,ngram", "--k", "3", "--max-batch", "32", "--max-queue", "64",
                            "--prefill-chunk", "16"});
  ASSERT_TRUE(srv);
  auto stub = srv->Stub();
  v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->GetModelInfo(&ctx, {}, &info).ok());
  }
  EXPECT_EQ(info.drafter(), "mtp");
  EXPECT_EQ(std::vector<std::string>(info.drafters().begin(), info.drafters().end()),
            (std::vector<std::string>{"mtp", "draft", "ngram"}));
  const auto prompt = FixtureIds("../demo/refs.safetensors", "prompt_ids");
  const char* names[] = {"mtp", "draft", "ngram", "none", ""};
  std::vector<v1::GenerateRequest> reqs;
  for (int i = 0; i < 64; ++i) {
    const size_t len = 4 + static_cast<size_t>(i * 5) % (prompt.size() - 4);
    v1::GenerateRequest r = IdsRequest({prompt.begin(), prompt.begin() + static_cast<std::ptrdiff_t>(len)},
                                       16 + static_cast<uint32_t>(i % 4) * 8);
    if (i % 8 == 7) {  // sampled in coupled mode: speculation still gives plain sampling's draws
      r.mutable_sampling()->set_temperature(0.8f);
      r.mutable_sampling()->set_seed(500 + static_cast<uint64_t>(i));
      r.mutable_sampling()->set_mode(v1::SamplingParams::MODE_COUPLED);
    }
    reqs.push_back(r);
  }
  // The plain result of each (its own request, drafting off), one at a time.
  std::vector<std::vector<int32_t>> plain(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    v1::GenerateRequest r = reqs[i];
    r.mutable_speculation()->set_drafter("none");
    const StreamResult got = Generate(*stub, r);
    ASSERT_TRUE(got.status.ok()) << i << ": " << got.status.error_message();
    plain[i] = got.ids;
  }
  const double none_drafts = srv->Metric("specd:spec_decode_num_draft_tokens_total");
  EXPECT_EQ(none_drafts, 0) << "requests with drafter none drafted";
  for (size_t i = 0; i < reqs.size(); ++i) {
    if (*names[i % 5]) reqs[i].mutable_speculation()->set_drafter(names[i % 5]);
  }
  std::vector<StreamResult> par(reqs.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < reqs.size(); ++i) threads.emplace_back([&, i] { par[i] = Generate(*stub, reqs[i]); });
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_TRUE(par[i].status.ok()) << i << ": " << par[i].status.error_message();
    EXPECT_EQ(par[i].ids, plain[i]) << "request " << i << " drafter '" << names[i % 5] << "'";
    const bool drafts = std::string(names[i % 5]) != "none";
    EXPECT_EQ(par[i].final_msg.stats().draft_tokens() > 0, drafts) << "request " << i << " " << names[i % 5];
  }
  double per_drafter = 0;
  for (const char* d : {"mtp", "draft", "ngram"}) {
    const std::string label = std::string("{drafter=\"") + d + "\"}";
    const double proposed = srv->Metric("specd:spec_decode_drafter_draft_tokens_total" + label);
    EXPECT_GT(proposed, 0) << d;
    EXPECT_GT(srv->Metric("specd:spec_decode_drafter_accepted_tokens_total" + label), 0) << d;
    per_drafter += proposed;
  }
  EXPECT_EQ(per_drafter, srv->Metric("specd:spec_decode_num_draft_tokens_total"));
  EXPECT_EQ(srv->WaitMetric("specd:cache_slots_in_use", 0, std::chrono::seconds(2)), 0);
  // A drafter the server does not serve is refused by name, and serving goes on.
  auto bad = IdsRequest({1, 2, 3}, 4);
  bad.mutable_speculation()->set_drafter("eagle");
  EXPECT_EQ(Generate(*stub, bad).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

}  // namespace
}  // namespace specd::itest
