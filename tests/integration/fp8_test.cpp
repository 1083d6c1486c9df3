// FP8 checkpoints through the daemon (docs/fp8.md): an FP8 checkpoint made by transformers
// serves transformers' own greedy ids for it, with n-gram speculation on; ModelInfo says how the
// weights are held; --quantize fp8 rounds a float checkpoint at load and refuses random weights.
#include <gtest/gtest.h>

#include "harness.h"

namespace specd::itest {
namespace {

TEST(Fp8OverGrpc, CheckpointServesTransformersGreedyIds) {
  for (const char* c : {"dense_fp8", "moe_fp8"}) {
    SCOPED_TRACE(c);
    const std::string dir = c;
    auto srv = Server::Start({"--model", FixtureDir(dir + "/model"), "--drafter", "ngram", "--tokenizer", "none"});
    ASSERT_TRUE(srv);
    const std::string fmt = srv->Info().weight_format();
    EXPECT_NE(fmt.find(dir == "dense_fp8" ? "fp8 64x64 blocks (checkpoint, 25 tensors)"
                                          : "fp8 32x32 blocks (checkpoint, 121 tensors)"),
              std::string::npos)
        << fmt;
    const auto prompt = FixtureIds(dir + "/refs.safetensors", "prompt_ids");
    const auto want = FixtureIds(dir + "/refs.safetensors", "greedy_ids");
    ASSERT_EQ(want.size(), 40u);
    const StreamResult r = Generate(*srv->Stub(), IdsRequest(prompt, 40));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.ids, want);
  }
}

TEST(Fp8OverGrpc, QuantizeAtLoad) {
  {
    auto srv = Server::Start({"--model", FixtureDir("dense/model"), "--drafter", "none", "--tokenizer", "none"});
    ASSERT_TRUE(srv);
    EXPECT_EQ(srv->Info().weight_format(), "F32 (as stored, converted)");
  }
  auto srv = Server::Start(
      {"--model", FixtureDir("dense/model"), "--drafter", "none", "--tokenizer", "none", "--quantize", "fp8"});
  ASSERT_TRUE(srv);
  EXPECT_EQ(srv->Info().weight_format(), "fp8 128x128 blocks (--quantize fp8, 25 tensors), held as F32");
  const auto prompt = FixtureIds("dense/refs.safetensors", "prompt_ids");
  const StreamResult r = Generate(*srv->Stub(), IdsRequest(prompt, 8));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.ids.size(), 8u);

  const CommandResult bad = RunCommand(SpecdBinary(), {"serve", "--port", "0", "--model", "random:0.8B", "--quantize", "fp8"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("--quantize fp8 needs a checkpoint"), std::string::npos) << bad.err;
  const CommandResult other = RunCommand(SpecdBinary(), {"serve", "--port", "0", "--quantize", "int4"});
  EXPECT_NE(other.exit_code, 0);
}

}  // namespace
}  // namespace specd::itest
