// Checkpoint loading speed (issue 17, docs/PERFORMANCE.md): specd's load of a checkpoint folder
// against a plain sequential read of the same .safetensors files, page cache warm, in one run.
//
//   checkpoint_load_bench DIR [--device cpu|cuda] [--repeat N]
//   checkpoint_load_bench DIR --write-random SHAPE   (first writes a bf16 checkpoint of a released shape
//                                          into DIR: one shard per layer, random values)
//
// Prints the plain read's and the load's GB/s (median of N) and their ratio.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "checkpoint/presets.h"
#include "checkpoint/safetensors.h"
#include "qwen35/model.h"
#include "runtime/backend.h"
#include "util/dtype.h"

namespace fs = std::filesystem;
using specd::bench::Median;
using specd::bench::Now;

namespace {

std::vector<fs::path> Shards(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".safetensors") out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Reads every file start to end through a 64 MiB buffer; returns the bytes read.
int64_t PlainRead(const std::vector<fs::path>& files) {
  std::vector<char> buf(64 << 20);
  int64_t n = 0;
  for (const auto& f : files) {
    const int fd = open(f.c_str(), O_RDONLY);
    if (fd < 0) continue;
    ssize_t r;
    while ((r = read(fd, buf.data(), buf.size())) > 0) n += r;
    close(fd);
  }
  return n;
}

// A bf16 checkpoint of `shape` with random values, one shard per layer (+ one for the rest).
int WriteRandom(const fs::path& dir, const std::string& shape) {
  auto cfg = specd::ReleasedShapes(shape);
  if (!cfg.ok()) {
    fmt::print(stderr, "{}\n", cfg.status().ToString());
    return 2;
  }
  fs::create_directories(dir);
  const specd::ModelConfig& c = *cfg;
  nlohmann::json j = {{"model_type", c.model_type}, {"vocab_size", c.vocab_size}, {"hidden_size", c.hidden_size},
                      {"intermediate_size", c.intermediate_size}, {"num_hidden_layers", c.num_hidden_layers},
                      {"num_attention_heads", c.num_attention_heads}, {"num_key_value_heads", c.num_key_value_heads},
                      {"head_dim", c.head_dim}, {"linear_num_key_heads", c.linear_num_key_heads},
                      {"linear_num_value_heads", c.linear_num_value_heads},
                      {"linear_key_head_dim", c.linear_key_head_dim}, {"linear_value_head_dim", c.linear_value_head_dim},
                      {"linear_conv_kernel_dim", c.linear_conv_kernel_dim}, {"tie_word_embeddings", c.tie_word_embeddings},
                      {"partial_rotary_factor", c.partial_rotary_factor}, {"rope_theta", c.rope_theta},
                      {"full_attention_interval", 4}, {"max_position_embeddings", 262144}};
  if (c.is_moe) {
    j["num_experts"] = c.num_experts;
    j["num_experts_per_tok"] = c.num_experts_per_tok;
    j["moe_intermediate_size"] = c.moe_intermediate_size;
    j["shared_expert_intermediate_size"] = c.shared_expert_intermediate_size;
  }
  std::ofstream(dir / "config.json") << j.dump(1);
  uint64_t s = 12345;
  auto bf16 = [&](std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    specd::TensorToWrite t{specd::DType::kBF16, std::move(shape), std::vector<std::byte>(static_cast<size_t>(2 * n))};
    auto* p = reinterpret_cast<uint16_t*>(t.bytes.data());
    for (int64_t i = 0; i < n; ++i) {
      s ^= s << 13; s ^= s >> 7; s ^= s << 17;
      p[i] = specd::F32ToBf16(0.02f * (static_cast<float>(s >> 40) / 16777216.f - 0.5f));
    }
    return t;
  };
  const int64_t H = c.hidden_size, C = c.conv_dim(), Hv = c.linear_num_value_heads, dv = c.linear_value_head_dim;
  const int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim, I = c.intermediate_size;
  nlohmann::json index = {{"metadata", nlohmann::json::object()}, {"weight_map", nlohmann::json::object()}};
  auto save = [&](const std::string& file, std::map<std::string, specd::TensorToWrite>& t) {
    for (const auto& [name, _] : t) index["weight_map"][name] = file;
    auto st = specd::SaveSafetensors((dir / file).string(), t);
    if (!st.ok()) fmt::print(stderr, "{}\n", st.ToString());
    t.clear();
  };
  std::map<std::string, specd::TensorToWrite> t;
  t["model.embed_tokens.weight"] = bf16({c.vocab_size, H});
  t["model.norm.weight"] = bf16({H});
  if (!c.tie_word_embeddings) t["lm_head.weight"] = bf16({c.vocab_size, H});
  save("model-embed.safetensors", t);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    t[p + "input_layernorm.weight"] = bf16({H});
    t[p + "post_attention_layernorm.weight"] = bf16({H});
    if (c.layer_types[l] == specd::LayerType::kLinearAttention) {
      const std::string q = p + "linear_attn.";
      t[q + "in_proj_qkv.weight"] = bf16({C, H});
      t[q + "in_proj_z.weight"] = bf16({Hv * dv, H});
      t[q + "in_proj_b.weight"] = bf16({Hv, H});
      t[q + "in_proj_a.weight"] = bf16({Hv, H});
      t[q + "conv1d.weight"] = bf16({C, 1, c.linear_conv_kernel_dim});
      t[q + "dt_bias"] = bf16({Hv});
      t[q + "A_log"] = bf16({Hv});
      t[q + "norm.weight"] = bf16({dv});
      t[q + "out_proj.weight"] = bf16({H, Hv * dv});
    } else {
      const std::string q = p + "self_attn.";
      t[q + "q_proj.weight"] = bf16({2 * Hq * D, H});
      t[q + "k_proj.weight"] = bf16({Hkv * D, H});
      t[q + "v_proj.weight"] = bf16({Hkv * D, H});
      t[q + "o_proj.weight"] = bf16({H, Hq * D});
      t[q + "q_norm.weight"] = bf16({D});
      t[q + "k_norm.weight"] = bf16({D});
    }
    if (c.is_moe) {
      fmt::print(stderr, "--write-random writes dense shapes only\n");
      return 2;
    }
    t[p + "mlp.gate_proj.weight"] = bf16({I, H});
    t[p + "mlp.up_proj.weight"] = bf16({I, H});
    t[p + "mlp.down_proj.weight"] = bf16({H, I});
    save(fmt::format("model-{:03d}.safetensors", l), t);
  }
  std::ofstream(dir / "model.safetensors.index.json") << index.dump(1);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fmt::print(stderr, "usage: checkpoint_load_bench DIR [--device cpu|cuda] [--repeat N] [--write-random SHAPE]\n");
    return 2;
  }
  const fs::path dir = argv[1];
  std::string device = "cpu";
  int repeat = 3;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--device") device = argv[i + 1];
    if (k == "--repeat") repeat = std::stoi(argv[i + 1]);
    if (k == "--write-random") {
      if (int rc = WriteRandom(dir, argv[i + 1]); rc != 0) return rc;
    }
  }
  const auto files = Shards(dir);
  auto be = specd::MakeBackend(device);
  if (!be.ok()) {
    fmt::print(stderr, "{}\n", be.status().ToString());
    return 1;
  }
  std::vector<double> read_s, load_s;
  int64_t bytes = 0;
  for (int r = 0; r < repeat; ++r) {
    double t0 = Now();
    bytes = PlainRead(files);
    read_s.push_back(Now() - t0);
    t0 = Now();
    auto m = specd::Qwen35Model::Load(dir.string(), be->get());
    (*be)->Synchronize();
    load_s.push_back(Now() - t0);
    if (!m.ok()) {
      fmt::print(stderr, "{}\n", m.status().ToString());
      return 1;
    }
  }
  const double gb = static_cast<double>(bytes) / 1e9, rd = Median(read_s), ld = Median(load_s);
  fmt::print("| files | plain read | specd load ({}) | load / read |\n|---|---|---|---|\n", device);
  fmt::print("| {:.2f} GB | {:.3f} s ({:.2f} GB/s) | {:.3f} s ({:.2f} GB/s) | {:.2f}x |\n", gb, rd, gb / rd, ld, gb / ld,
             ld / rd);
  return 0;
}
