// Checkpoint → weights (docs/DESIGN-NOTES.md, the forward): fused and per-expert MoE tensors, sharded checkpoints,
// errors naming a missing or mis-shaped tensor, ignored mtp.* / model.visual.* tensors and tied
// embeddings. Each variant is a rewritten copy of a fixture checkpoint made here, and must give
// the logits of the original.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoint/safetensors.h"
#include "runtime/backend.h"
#include "test_util.h"

namespace specd::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct HostTensor {
  std::vector<int64_t> shape;
  std::vector<float> v;
};
using Tensors = std::map<std::string, HostTensor>;

Tensors ReadAllTensors(const std::string& dir) {
  Tensors out;
  auto ck = Checkpoint::Open(dir);
  EXPECT_TRUE(ck.ok()) << ck.status().ToString();
  if (!ck.ok()) return out;
  for (const auto& name : (*ck)->Names()) {
    auto v = (*ck)->ReadF32(name);
    EXPECT_TRUE(v.ok()) << v.status().ToString();
    out[name] = HostTensor{(*ck)->Find(name)->shape, v.ok() ? *v : std::vector<float>{}};
  }
  return out;
}

json ReadConfig(const std::string& dir) {
  std::ifstream in(dir + "/config.json");
  return json::parse(in);
}

std::map<std::string, TensorToWrite> ToWrite(const Tensors& t) {
  std::map<std::string, TensorToWrite> w;
  for (const auto& [name, h] : t) w[name] = F32Tensor(h.shape, h.v);
  return w;
}

class Weights : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "specd_w_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr) << tmpl;
    root_ = tmpl;
    backend_ = MakeCpuBackend();
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  // A new checkpoint directory holding `tensors` in model.safetensors and `cfg` as config.json.
  std::string Write(const std::string& name, const Tensors& tensors, const json& cfg) {
    const std::string dir = (fs::path(root_) / name).string();
    fs::create_directories(dir);
    WriteConfig(dir, cfg);
    Status s = SaveSafetensors(dir + "/model.safetensors", ToWrite(tensors), {{"format", "pt"}});
    EXPECT_TRUE(s.ok()) << s.ToString();
    return dir;
  }
  static void WriteConfig(const std::string& dir, const json& cfg) {
    std::ofstream out(dir + "/config.json", std::ios::trunc);
    out << cfg.dump(2);
  }

  std::unique_ptr<Qwen35Model> MustLoad(const std::string& dir) {
    auto m = Qwen35Model::Load(dir, backend_.get());
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return m.ok() ? std::move(m).value() : nullptr;
  }
  Status LoadError(const std::string& dir) {
    auto m = Qwen35Model::Load(dir, backend_.get());
    EXPECT_FALSE(m.ok()) << "loaded " << dir;
    return m.status();
  }
  // All logits of the fixture's prompt on a fresh cache.
  std::vector<float> PromptLogits(Qwen35Model* m, const std::string& refs_case) {
    if (m == nullptr) return {};
    auto refs = LoadRefs(refs_case);
    CacheOptions o;
    o.max_ctx = 128;
    auto c = m->NewCache(o);
    EXPECT_TRUE(c.ok());
    const int slot = *(*c)->AllocSlot();
    return RunForward(*m, **c, slot, refs.Ids("prompt_ids"));
  }

  std::string root_;
  std::unique_ptr<Backend> backend_;
};

// ---------------------------------------------------------------------------------------------
// (a) MoE experts: per-expert 2-D tensors and fused 3-D tensors load to the same model.

// "model.layers.{i}.mlp." prefixes of every MoE layer.
std::vector<std::string> MoePrefixes(const Tensors& t) {
  std::vector<std::string> p;
  for (const auto& [name, h] : t) {
    const std::string key = "mlp.gate.weight";
    if (name.size() > key.size() && name.ends_with(key)) p.push_back(name.substr(0, name.size() - key.size() + 4));
  }
  return p;
}

// Per-expert -> fused: gate_up_proj [E, 2Ie, H] (gate rows first, or up first when `swap`),
// down_proj [E, H, Ie].
Tensors Fuse(const Tensors& in, int64_t E, bool swap = false) {
  Tensors out;
  for (const auto& [name, h] : in) {
    if (name.find(".mlp.experts.") == std::string::npos) out[name] = h;
  }
  for (const auto& p : MoePrefixes(in)) {
    const auto& g0 = in.at(p + "experts.0.gate_proj.weight");
    const int64_t Ie = g0.shape[0], H = g0.shape[1];
    HostTensor gu{{E, 2 * Ie, H}, {}}, dn{{E, H, Ie}, {}};
    for (int64_t e = 0; e < E; ++e) {
      const std::string q = p + "experts." + std::to_string(e) + ".";
      const auto& g = in.at(q + "gate_proj.weight").v;
      const auto& u = in.at(q + "up_proj.weight").v;
      const auto& d = in.at(q + "down_proj.weight").v;
      const auto& first = swap ? u : g;
      const auto& second = swap ? g : u;
      gu.v.insert(gu.v.end(), first.begin(), first.end());
      gu.v.insert(gu.v.end(), second.begin(), second.end());
      dn.v.insert(dn.v.end(), d.begin(), d.end());
    }
    out[p + "experts.gate_up_proj"] = std::move(gu);
    out[p + "experts.down_proj"] = std::move(dn);
  }
  return out;
}

// Fused -> per-expert: experts.{e}.gate_proj.weight = first Ie rows of gate_up_proj[e], up_proj the
// next Ie, down_proj.weight = down_proj[e].
Tensors Split(const Tensors& in) {
  Tensors out;
  for (const auto& [name, h] : in) {
    const bool gu = name.ends_with("mlp.experts.gate_up_proj"), dn = name.ends_with("mlp.experts.down_proj");
    if (!gu && !dn) {
      out[name] = h;
      continue;
    }
    const std::string p = name.substr(0, name.rfind("experts.") + 8);  // "...mlp.experts."
    const int64_t E = h.shape[0], R = h.shape[1], Ccol = h.shape[2];
    for (int64_t e = 0; e < E; ++e) {
      auto rows = [&](int64_t r0, int64_t n) {
        const auto b = h.v.begin() + (e * R + r0) * Ccol;
        return HostTensor{{n, Ccol}, std::vector<float>(b, b + n * Ccol)};
      };
      const std::string q = p + std::to_string(e) + ".";
      if (gu) {
        out[q + "gate_proj.weight"] = rows(0, R / 2);
        out[q + "up_proj.weight"] = rows(R / 2, R / 2);
      } else {
        out[q + "down_proj.weight"] = rows(0, R);
      }
    }
  }
  return out;
}

TEST_F(Weights, MoeFusedAndPerExpertCheckpointsGiveTheSameLogits) {
  const std::string fixture = ModelDir("moe");
  const Tensors orig = ReadAllTensors(fixture);
  const json cfg = ReadConfig(fixture);
  const int64_t E = cfg.at("num_experts").get<int64_t>();
  auto base_model = MustLoad(fixture);
  const auto base = PromptLogits(base_model.get(), "moe");
  ASSERT_FALSE(base.empty());
  const int64_t V = base_model->config().vocab_size;
  EXPECT_LE(MaxRowRelErr(base, LoadRefs("moe").F("prompt_logits"), V), 1e-4);

  const bool fixture_is_fused = orig.contains("model.layers.0.mlp.experts.gate_up_proj");
  const Tensors fused = fixture_is_fused ? orig : Fuse(orig, E);
  const Tensors per_expert = Split(fused);
  ASSERT_TRUE(fused.contains("model.layers.0.mlp.experts.gate_up_proj"));
  ASSERT_FALSE(fused.contains("model.layers.0.mlp.experts.0.gate_proj.weight"));
  ASSERT_TRUE(per_expert.contains("model.layers.3.mlp.experts.7.up_proj.weight"));
  ASSERT_FALSE(per_expert.contains("model.layers.0.mlp.experts.gate_up_proj"));
  EXPECT_EQ(fused.at("model.layers.0.mlp.experts.gate_up_proj").shape,
            (std::vector<int64_t>{E, 2 * cfg.at("moe_intermediate_size").get<int64_t>(), cfg.at("hidden_size").get<int64_t>()}));

  auto fm = MustLoad(Write("fused", fused, cfg));
  EXPECT_LE(MaxRowRelErr(PromptLogits(fm.get(), "moe"), base, V), 1e-6) << "fused";
  auto pm = MustLoad(Write("per_expert", per_expert, cfg));
  EXPECT_LE(MaxRowRelErr(PromptLogits(pm.get(), "moe"), base, V), 1e-6) << "per-expert";

  // The order of gate and up inside gate_up_proj matters: up-first gives other logits, so the
  // checks above would catch a loader that fused the wrong way round.
  if (!fixture_is_fused) {
    auto sm = MustLoad(Write("swapped", Fuse(orig, E, /*swap=*/true), cfg));
    EXPECT_GT(MaxRowRelErr(PromptLogits(sm.get(), "moe"), base, V), 1e-3);
  }
}

TEST_F(Weights, MoeMissingExpertTensorIsNamed) {
  const std::string fixture = ModelDir("moe");
  Tensors t = ReadAllTensors(fixture);
  const json cfg = ReadConfig(fixture);
  Tensors fused = t.contains("model.layers.0.mlp.experts.gate_up_proj") ? t : Fuse(t, cfg.at("num_experts").get<int64_t>());
  Tensors per_expert = Split(fused);
  per_expert.erase("model.layers.2.mlp.experts.5.up_proj.weight");
  Status s = LoadError(Write("missing_expert", per_expert, cfg));
  EXPECT_TRUE(Contains(s.message(), "layers.2.mlp.experts.5.up_proj.weight"));
  auto& dn = fused.at("model.layers.1.mlp.experts.down_proj");  // one expert short
  dn.shape[0] -= 1;
  dn.v.resize(static_cast<size_t>(dn.shape[0] * dn.shape[1] * dn.shape[2]));
  Status s2 = LoadError(Write("short_fused", fused, cfg));
  EXPECT_TRUE(Contains(s2.message(), "layers.1.mlp.experts.down_proj"));
}

// ---------------------------------------------------------------------------------------------
// (b) A sharded checkpoint: two shards + model.safetensors.index.json.

TEST_F(Weights, ShardedCheckpointLoadsAndMatches) {
  const std::string fixture = ModelDir("dense");
  const Tensors orig = ReadAllTensors(fixture);
  const std::string dir = (fs::path(root_) / "sharded").string();
  fs::create_directories(dir);
  WriteConfig(dir, ReadConfig(fixture));
  std::map<std::string, TensorToWrite> shard[2];
  json weight_map = json::object();
  int i = 0;
  for (const auto& [name, h] : orig) {
    const int s = i++ % 2;
    shard[s][name] = F32Tensor(h.shape, h.v);
    weight_map[name] = fmt::format("model-{:05d}-of-00002.safetensors", s + 1);
  }
  for (int s = 0; s < 2; ++s) {
    Status st = SaveSafetensors(fmt::format("{}/model-{:05d}-of-00002.safetensors", dir, s + 1), shard[s]);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  {
    std::ofstream out(dir + "/model.safetensors.index.json");
    out << json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump(2);
  }
  ASSERT_FALSE(fs::exists(dir + "/model.safetensors"));
  ASSERT_GT(shard[0].size(), 10u);
  ASSERT_GT(shard[1].size(), 10u);

  auto base_model = MustLoad(fixture);
  const auto base = PromptLogits(base_model.get(), "dense");
  auto m = MustLoad(dir);
  EXPECT_LE(MaxRowRelErr(PromptLogits(m.get(), "dense"), base, base_model->config().vocab_size), 1e-6);
}

// ---------------------------------------------------------------------------------------------
// (c) Errors name the tensor.

TEST_F(Weights, MissingTensorIsNamed) {
  const std::string fixture = ModelDir("dense");
  const json cfg = ReadConfig(fixture);
  Tensors t = ReadAllTensors(fixture);
  ASSERT_EQ(t.erase("model.layers.1.linear_attn.A_log"), 1u);
  Status s = LoadError(Write("missing", t, cfg));
  EXPECT_TRUE(Contains(s.message(), "layers.1.linear_attn.A_log")) << s.ToString();

  Tensors t2 = ReadAllTensors(fixture);
  ASSERT_EQ(t2.erase("lm_head.weight"), 1u);  // untied: the head is required
  Status s2 = LoadError(Write("no_head", t2, cfg));
  EXPECT_TRUE(Contains(s2.message(), "lm_head.weight")) << s2.ToString();

  Tensors t3 = ReadAllTensors(fixture);
  ASSERT_EQ(t3.erase("model.layers.3.self_attn.k_norm.weight"), 1u);
  Status s3 = LoadError(Write("no_knorm", t3, cfg));
  EXPECT_TRUE(Contains(s3.message(), "layers.3.self_attn.k_norm.weight")) << s3.ToString();
}

TEST_F(Weights, WrongShapeIsNamed) {
  const std::string fixture = ModelDir("dense");
  const json cfg = ReadConfig(fixture);
  Tensors t = ReadAllTensors(fixture);
  auto& z = t.at("model.layers.2.linear_attn.in_proj_z.weight");
  ASSERT_EQ(z.shape.size(), 2u);
  z.shape[0] += 1;
  z.v.resize(static_cast<size_t>(z.shape[0] * z.shape[1]), 0.f);
  Status s = LoadError(Write("bad_shape", t, cfg));
  EXPECT_TRUE(Contains(s.message(), "layers.2.linear_attn.in_proj_z.weight")) << s.ToString();

  // Same element count, different shape: still rejected.
  Tensors t2 = ReadAllTensors(fixture);
  auto& q = t2.at("model.layers.3.self_attn.q_proj.weight");
  q.shape = {q.shape[1], q.shape[0]};
  Status s2 = LoadError(Write("transposed", t2, cfg));
  EXPECT_TRUE(Contains(s2.message(), "layers.3.self_attn.q_proj.weight")) << s2.ToString();

  // A config that disagrees with the checkpoint (more layers than stored) names the first absent one.
  json more = cfg;
  more["num_hidden_layers"] = 5;
  more["layer_types"].push_back("linear_attention");
  Status s3 = LoadError(Write("more_layers", ReadAllTensors(fixture), more));
  EXPECT_TRUE(Contains(s3.message(), "layers.4.")) << s3.ToString();
}

// ---------------------------------------------------------------------------------------------
// (d) mtp.* and model.visual.* tensors are ignored.

TEST_F(Weights, MtpAndVisualTensorsAreIgnored) {
  const std::string fixture = ModelDir("dense");
  const json cfg = ReadConfig(fixture);
  Tensors t = ReadAllTensors(fixture);
  const int64_t H = cfg.at("hidden_size").get<int64_t>();
  t["mtp.fc.weight"] = HostTensor{{H, 2 * H}, std::vector<float>(static_cast<size_t>(2 * H * H), 0.5f)};
  t["mtp.layers.0.mlp.experts.0.gate_proj.weight"] = HostTensor{{2, 2}, {1, 2, 3, 4}};
  t["model.visual.foo"] = HostTensor{{3}, {1.f, 2.f, 3.f}};
  auto m = MustLoad(Write("extra", t, cfg));
  auto base_model = MustLoad(fixture);
  ASSERT_NE(m, nullptr);
  // Only the backbone is loaded: same weight bytes as the plain fixture.
  EXPECT_EQ(m->weight_bytes(), base_model->weight_bytes());
  EXPECT_LE(MaxRowRelErr(PromptLogits(m.get(), "dense"), PromptLogits(base_model.get(), "dense"),
                         base_model->config().vocab_size),
            1e-6);
}

// ---------------------------------------------------------------------------------------------
// (e) Tied embeddings: no lm_head.weight, the embedding is the head.

TEST_F(Weights, TiedEmbeddingsUseTheEmbeddingMatrix) {
  const std::string fixture = ModelDir("dense");
  json cfg = ReadConfig(fixture);
  const Tensors orig = ReadAllTensors(fixture);

  Tensors tied = orig;
  ASSERT_EQ(tied.erase("lm_head.weight"), 1u);
  json tcfg = cfg;
  tcfg["tie_word_embeddings"] = true;
  auto tm = MustLoad(Write("tied", tied, tcfg));

  // The reference: an untied copy whose lm_head.weight IS the embedding matrix.
  Tensors copy = orig;
  copy.at("lm_head.weight") = orig.at("model.embed_tokens.weight");
  auto cm = MustLoad(Write("head_is_embedding", copy, cfg));

  auto base_model = MustLoad(fixture);
  ASSERT_TRUE(tm && cm && base_model);
  EXPECT_TRUE(tm->config().tie_word_embeddings);
  const int64_t V = base_model->config().vocab_size;
  const auto lt = PromptLogits(tm.get(), "dense"), lc = PromptLogits(cm.get(), "dense");
  EXPECT_LE(MaxRowRelErr(lt, lc, V), 1e-6);
  // And the head mattered: the fixture's own lm_head gives other logits.
  EXPECT_GT(MaxRowRelErr(lt, PromptLogits(base_model.get(), "dense"), V), 1e-2);
  // The tied model holds one [V, H] matrix fewer.
  const int64_t H = cfg.at("hidden_size").get<int64_t>();
  EXPECT_EQ(tm->weight_bytes(), base_model->weight_bytes() - V * H * 4);

  // Same with the nested multimodal layout, where the flag sits at the top level.
  const std::string mm = ModelDir("dense_multimodal_layout");
  Tensors mt = ReadAllTensors(mm);
  ASSERT_EQ(mt.erase("lm_head.weight"), 1u);
  json mcfg = ReadConfig(mm);
  mcfg["tie_word_embeddings"] = true;
  auto mmodel = MustLoad(Write("tied_nested", mt, mcfg));
  ASSERT_NE(mmodel, nullptr);
  EXPECT_LE(MaxRowRelErr(PromptLogits(mmodel.get(), "dense"), lc, V), 1e-6);
}


// ---------------------------------------------------------------------------------------------
// (f) The MTP head (mtp.*): loaded on request, in both name layouts, dense and MoE (experts
// fused or per expert); a missing head or tensor is named.

// The text config (nested under text_config in the multimodal layout).
json& TextConfig(json& cfg) { return cfg.contains("text_config") ? cfg["text_config"] : cfg; }

// MTP tensors with the config's shapes, deterministic values; MoE experts per expert or fused.
Tensors MtpTensors(const json& tc, bool fused_experts) {
  const int64_t H = tc.at("hidden_size"), Hq = tc.at("num_attention_heads"), Hkv = tc.at("num_key_value_heads");
  const int64_t D = tc.at("head_dim");
  uint32_t state = 12345;
  auto t = [&](std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    HostTensor h{shape, std::vector<float>(static_cast<size_t>(n))};
    for (float& x : h.v) {
      state = state * 1664525u + 1013904223u;
      x = static_cast<float>(state >> 8) / 16777216.f - 0.5f;
    }
    return h;
  };
  Tensors m;
  m["mtp.fc.weight"] = t({H, 2 * H});
  m["mtp.pre_fc_norm_embedding.weight"] = t({H});
  m["mtp.pre_fc_norm_hidden.weight"] = t({H});
  m["mtp.norm.weight"] = t({H});
  const std::string l = "mtp.layers.0.";
  m[l + "input_layernorm.weight"] = t({H});
  m[l + "post_attention_layernorm.weight"] = t({H});
  m[l + "self_attn.q_proj.weight"] = t({2 * Hq * D, H});
  m[l + "self_attn.k_proj.weight"] = t({Hkv * D, H});
  m[l + "self_attn.v_proj.weight"] = t({Hkv * D, H});
  m[l + "self_attn.o_proj.weight"] = t({H, Hq * D});
  m[l + "self_attn.q_norm.weight"] = t({D});
  m[l + "self_attn.k_norm.weight"] = t({D});
  if (tc.contains("num_experts") && !tc["num_experts"].is_null()) {
    const int64_t E = tc.at("num_experts"), Ie = tc.at("moe_intermediate_size");
    const int64_t Is = tc.at("shared_expert_intermediate_size");
    m[l + "mlp.gate.weight"] = t({E, H});
    for (int64_t e = 0; e < E; ++e) {
      const std::string q = l + "mlp.experts." + std::to_string(e) + ".";
      m[q + "gate_proj.weight"] = t({Ie, H});
      m[q + "up_proj.weight"] = t({Ie, H});
      m[q + "down_proj.weight"] = t({H, Ie});
    }
    if (fused_experts) m = Fuse(m, E);
    m[l + "mlp.shared_expert.gate_proj.weight"] = t({Is, H});
    m[l + "mlp.shared_expert.up_proj.weight"] = t({Is, H});
    m[l + "mlp.shared_expert.down_proj.weight"] = t({H, Is});
    m[l + "mlp.shared_expert_gate.weight"] = t({1, H});
  } else {
    const int64_t I = tc.at("intermediate_size");
    m[l + "mlp.gate_proj.weight"] = t({I, H});
    m[l + "mlp.up_proj.weight"] = t({I, H});
    m[l + "mlp.down_proj.weight"] = t({H, I});
  }
  return m;
}

int64_t Elements(const Tensors& t, const std::string& prefix) {
  int64_t n = 0;
  for (const auto& [name, h] : t) {
    if (name.starts_with(prefix)) n += static_cast<int64_t>(h.v.size());
  }
  return n;
}

TEST_F(Weights, MtpHeadLoadsInEveryLayout) {
  for (const char* fixture_name : {"dense", "dense_multimodal_layout", "moe"}) {
    SCOPED_TRACE(fixture_name);
    const std::string fixture = ModelDir(fixture_name);
    json cfg = ReadConfig(fixture);
    TextConfig(cfg)["mtp_num_hidden_layers"] = 1;
    Tensors t = ReadAllTensors(fixture);
    const Tensors mtp = MtpTensors(TextConfig(cfg), /*fused_experts=*/false);
    t.insert(mtp.begin(), mtp.end());
    auto m = MustLoad(Write(std::string(fixture_name) + "_mtp", t, cfg));
    ASSERT_NE(m, nullptr);
    auto base = MustLoad(fixture);
    EXPECT_EQ(m->weight_bytes(), base->weight_bytes()) << "the backbone alone until the head is asked for";
    EXPECT_EQ(m->mtp_head(), nullptr);
    const std::string dir = (fs::path(root_) / (std::string(fixture_name) + "_mtp")).string();
    ASSERT_TRUE(m->LoadMtpHead(dir).ok());
    const MtpWeights* h = m->mtp_head();
    ASSERT_NE(h, nullptr);
    EXPECT_EQ(h->bytes, Elements(mtp, "mtp.") * 4) << "every mtp.* tensor, fp32 on the CPU";
    EXPECT_EQ(h->layer.type, LayerType::kFullAttention);
    EXPECT_EQ(backend_->DownloadF32(h->norm), mtp.at("mtp.norm.weight").v);
    // fc [H, 2H] is kept as its column halves: the embedding's, then the hidden state's.
    const std::vector<float>& fc = mtp.at("mtp.fc.weight").v;
    const int64_t H = TextConfig(cfg).at("hidden_size");
    const std::vector<float> fe = backend_->DownloadF32(h->fc_embedding), fh = backend_->DownloadF32(h->fc_hidden);
    ASSERT_EQ(fe.size(), static_cast<size_t>(H * H));
    for (int64_t r = 0; r < H; r += 17) {
      for (int64_t c = 0; c < H; c += 13) {
        EXPECT_EQ(fe[r * H + c], fc[r * 2 * H + c]);
        EXPECT_EQ(fh[r * H + c], fc[r * 2 * H + H + c]);
      }
    }
    EXPECT_EQ(backend_->DownloadF32(h->layer.attn.k_norm), mtp.at("mtp.layers.0.self_attn.k_norm.weight").v);
  }
}

TEST_F(Weights, MtpMoeExpertsFusedOrPerExpertLoadTheSame) {
  const std::string fixture = ModelDir("moe");
  json cfg = ReadConfig(fixture);
  TextConfig(cfg)["mtp_num_hidden_layers"] = 1;
  std::vector<float> gate_up[2], down[2];
  for (int fused = 0; fused < 2; ++fused) {
    Tensors t = ReadAllTensors(fixture);
    const Tensors mtp = MtpTensors(TextConfig(cfg), fused == 1);
    EXPECT_EQ(mtp.count("mtp.layers.0.mlp.experts.gate_up_proj") == 1, fused == 1);
    t.insert(mtp.begin(), mtp.end());
    const std::string dir = Write(fused ? "moe_mtp_fused" : "moe_mtp_split", t, cfg);
    auto m = MustLoad(dir);
    ASSERT_NE(m, nullptr);
    Status st = m->LoadMtpHead(dir);
    ASSERT_TRUE(st.ok()) << st.ToString();
    gate_up[fused] = backend_->DownloadF32(m->mtp_head()->layer.moe.gate_up);
    down[fused] = backend_->DownloadF32(m->mtp_head()->layer.moe.down);
  }
  EXPECT_FALSE(gate_up[0].empty());
  EXPECT_EQ(gate_up[0], gate_up[1]);
  EXPECT_EQ(down[0], down[1]);
}

TEST_F(Weights, MtpHeadMissingOrBrokenIsNamed) {
  const std::string fixture = ModelDir("dense");
  json cfg = ReadConfig(fixture);
  TextConfig(cfg)["mtp_num_hidden_layers"] = 1;
  // No head at all.
  auto plain = MustLoad(fixture);
  ASSERT_NE(plain, nullptr);
  Status none = plain->LoadMtpHead(fixture);
  EXPECT_EQ(none.code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(none.message(), "no MTP head")) << none.ToString();

  auto load_error = [&](const std::string& name, const Tensors& mtp, const json& c) {
    Tensors t = ReadAllTensors(fixture);
    t.insert(mtp.begin(), mtp.end());
    const std::string dir = Write(name, t, c);
    auto m = MustLoad(dir);
    if (m == nullptr) return Status(StatusCode::kInternal, "backbone did not load");
    Status st = m->LoadMtpHead(dir);
    EXPECT_FALSE(st.ok()) << name;
    EXPECT_EQ(m->mtp_head(), nullptr) << "a failed load leaves no head";
    return st;
  };
  Tensors missing = MtpTensors(TextConfig(cfg), false);
  missing.erase("mtp.layers.0.self_attn.k_norm.weight");
  EXPECT_TRUE(Contains(load_error("mtp_missing", missing, cfg).message(), "mtp.layers.0.self_attn.k_norm.weight"));

  Tensors misshaped = MtpTensors(TextConfig(cfg), false);
  auto& fc = misshaped.at("mtp.fc.weight");
  fc.shape = {fc.shape[1], fc.shape[0]};
  EXPECT_TRUE(Contains(load_error("mtp_misshaped", misshaped, cfg).message(), "mtp.fc.weight"));

  json two = cfg;
  TextConfig(two)["mtp_num_hidden_layers"] = 2;
  Status st2 = load_error("mtp_two_layers", MtpTensors(TextConfig(cfg), false), two);
  EXPECT_EQ(st2.code(), StatusCode::kUnimplemented);
  EXPECT_TRUE(Contains(st2.message(), "mtp_num_hidden_layers")) << st2.ToString();
}

}  // namespace
}  // namespace specd::testing
