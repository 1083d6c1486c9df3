// The MTP fixtures (tests/fixtures/qwen35-tiny/{dense,moe}_mtp, from tools/mtp_reference.py) as a
// loadable checkpoint: the base fixture model's config (mtp_num_hidden_layers = 1) and tensors
// plus the head's mtp.safetensors, joined by a model.safetensors.index.json as sharded
// checkpoints are. Shared by the CPU parity test and the GPU test.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "checkpoint/safetensors.h"
#include "test_util.h"

namespace specd::testing {

inline std::string MtpCheckpoint(const std::string& base_case) {
  namespace fs = std::filesystem;
  std::string tmpl = (fs::path(::testing::TempDir()) / "specd_mtp_XXXXXX").string();
  EXPECT_NE(mkdtemp(tmpl.data()), nullptr);
  const fs::path dir = tmpl, model = ModelDir(base_case), mtp = FixtureDir(base_case + "_mtp");
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(model / "config.json"));
  (cfg.contains("text_config") ? cfg["text_config"] : cfg)["mtp_num_hidden_layers"] = 1;
  std::ofstream(dir / "config.json") << cfg.dump(1);
  fs::copy_file(model / "model.safetensors", dir / "backbone.safetensors");
  fs::copy_file(mtp / "mtp.safetensors", dir / "mtp.safetensors");
  nlohmann::json map = nlohmann::json::object();
  for (const char* file : {"backbone.safetensors", "mtp.safetensors"}) {
    auto ck = Checkpoint::Open((dir / file).string());
    EXPECT_TRUE(ck.ok()) << ck.status().ToString();
    if (!ck.ok()) continue;
    for (const auto& name : (*ck)->Names()) map[name] = file;
  }
  std::ofstream(dir / "model.safetensors.index.json") << nlohmann::json{{"metadata", {}}, {"weight_map", map}}.dump();
  return dir.string();
}

// transformers' own bf16 MTP forward against its fp32 one on the same inputs (refs.json): the
// error budget of a bf16 path.
inline double MtpBf16Budget(const std::string& base_case) {
  std::ifstream in(FixtureDir(base_case + "_mtp") + "/refs.json");
  return nlohmann::json::parse(in).at("bf16_vs_fp32_max_row_rel_l2").get<double>();
}

}  // namespace specd::testing
