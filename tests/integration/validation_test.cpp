// Every malformed request gets INVALID_ARGUMENT with a message that names the problem, while
// streams already running keep going and complete with the right tokens.
#include <functional>
#include <thread>

#include <gtest/gtest.h>

#include "harness.h"

namespace specd::itest {
namespace {

struct BadCase {
  const char* name;
  std::function<void(v1::GenerateRequest&)> edit;
  const char* message;  // a substring the error must contain
};

TEST(Validation, MalformedRequestsAreInvalidArgumentWhileOthersStream) {
  // The fixture model has no tokenizer, and the server runs the draft-model drafter.
  auto srv = Server::Start({"--model", FixtureDir("dense/model"), "--draft", FixtureDir("draft_near/model")});
  ASSERT_TRUE(srv);
  auto stub = srv->Stub();
  const auto prompt = FixtureIds("dense/refs.safetensors", "prompt_ids");
  const auto want = FixtureIds("dense/refs.safetensors", "greedy_ids");

  // Four long background streams of the fixture prompt, running while the bad requests arrive:
  // the bad requests are sent only once all four run, and some must still run after them.
  std::vector<StreamResult> bg(4);
  std::vector<std::thread> threads;
  // A generous deadline: the check is that they complete, and under a sanitizer the CPU model is
  // several times slower than the 60 s default allows.
  for (auto& r : bg) threads.emplace_back([&] { r = Generate(*stub, IdsRequest(prompt, 1500), 600000); });
  ASSERT_EQ(srv->WaitMetric("specd:num_requests_running", 4, std::chrono::seconds(10)), 4);

  const std::vector<BadCase> cases = {
      {"empty token_ids", [](auto& r) { r.mutable_token_ids()->clear_ids(); }, "empty prompt"},
      {"no prompt", [](auto& r) { r.clear_prompt(); }, "empty prompt"},
      {"out-of-vocab id", [](auto& r) { r.mutable_token_ids()->add_ids(512); }, "out of the vocabulary"},
      {"negative id", [](auto& r) { r.mutable_token_ids()->set_ids(0, -1); }, "out of the vocabulary"},
      {"temperature -1", [](auto& r) { r.mutable_sampling()->set_temperature(-1); }, "temperature"},
      {"top_p 0", [](auto& r) { r.mutable_sampling()->set_top_p(0); }, "top_p"},
      {"top_p 1.5", [](auto& r) { r.mutable_sampling()->set_top_p(1.5f); }, "top_p"},
      {"min_p 2", [](auto& r) { r.mutable_sampling()->set_min_p(2); }, "min_p"},
      {"max_tokens 0", [](auto& r) { r.mutable_sampling()->set_max_tokens(0); }, "max_tokens"},
      {"over the context", [](auto& r) { r.mutable_sampling()->set_max_tokens(5000); }, "context length 4096"},
      {"min_tokens > max_tokens", [](auto& r) { r.mutable_sampling()->set_min_tokens(100); }, "min_tokens"},
      {"stop id out of vocab", [](auto& r) { r.mutable_sampling()->add_stop_token_ids(700); }, "stop token id"},
      {"unknown sampling mode", [](auto& r) { r.mutable_sampling()->set_mode(static_cast<v1::SamplingParams::Mode>(9)); },
       "sampling mode"},
      {"unknown drafter", [](auto& r) { r.mutable_speculation()->set_drafter("eagle"); }, "unknown drafter 'eagle'"},
      {"other drafter", [](auto& r) { r.mutable_speculation()->set_drafter("ngram"); }, "drafter 'ngram' is not served here"},
      {"k 99", [](auto& r) { r.mutable_speculation()->set_k(99); }, "k must be in [0, 16]"},
      {"text without tokenizer", [](auto& r) { r.set_text("hello"); }, "model has no tokenizer"},
      {"chat without tokenizer", [](auto& r) { r.mutable_chat()->add_messages()->set_content("hi"); },
       "model has no tokenizer"},
      {"stop string without tokenizer", [](auto& r) { r.mutable_sampling()->add_stop("x"); }, "no tokenizer"},
  };
  for (const auto& c : cases) {
    v1::GenerateRequest req = IdsRequest(prompt, 40);
    c.edit(req);
    const StreamResult r = Generate(*stub, req);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name << ": " << r.status.error_message();
    EXPECT_NE(r.status.error_message().find(c.message), std::string::npos)
        << c.name << ": message was '" << r.status.error_message() << "'";
    EXPECT_EQ(r.messages, 0) << c.name;
  }
  EXPECT_GE(srv->Metric("specd:num_requests_running"), 1) << "the streams ended before the bad requests did";
  for (auto& t : threads) t.join();
  for (const auto& r : bg) {
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    ASSERT_EQ(r.ids.size(), 1500u);
    EXPECT_EQ(std::vector<int32_t>(r.ids.begin(), r.ids.begin() + static_cast<long>(want.size())), want);
  }
  EXPECT_EQ(srv->Metric("specd:request_failure_total{code=\"INVALID_ARGUMENT\"}"), static_cast<double>(cases.size()));
  EXPECT_EQ(srv->WaitMetric("specd:cache_slots_in_use", 0, std::chrono::seconds(3)), 0);
}

TEST(Validation, ClientPrintsStatusNameAndExitsNonZero) {
  auto srv = Server::Start({"--model", FixtureDir("dense/model"), "--drafter", "ngram"});
  ASSERT_TRUE(srv);
  const CommandResult r = RunCommand(ClientBinary(), {"--address", srv->address(), "generate", "--prompt-ids", "1,2,9999"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("INVALID_ARGUMENT"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("9999"), std::string::npos) << r.err;
}

TEST(Validation, BadFlagsStopTheServerAtStartup) {
  const CommandResult a = RunCommand(SpecdBinary(), {"serve", "--model", FixtureDir("dense/model"), "--drafter", "draft"});
  EXPECT_NE(a.exit_code, 0);
  EXPECT_NE(a.err.find("--drafter draft needs --draft"), std::string::npos) << a.err;
  const CommandResult b = RunCommand(SpecdBinary(), {"serve", "--model", "/nonexistent/model", "--port", "0"});
  EXPECT_NE(b.exit_code, 0);
  EXPECT_NE(b.err.find("/nonexistent/model"), std::string::npos) << b.err;
  const CommandResult c = RunCommand(SpecdBinary(), {"serve", "--config", "/nonexistent/specd.json"});
  EXPECT_NE(c.exit_code, 0);
}

}  // namespace
}  // namespace specd::itest
