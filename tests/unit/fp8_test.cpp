// Block-wise FP8 checkpoints (docs/fp8.md): the e4m3 codec against torch's casts, the quantizer
// and dequantizer against transformers' FineGrainedFP8 ops (tests/fixtures/fp8/ops.safetensors,
// made by tools/fp8_reference.py), quantization_config parsing, and the loader on FP8 checkpoints
// made by transformers: fused experts equal per-expert ones, --quantize fp8 equals the checkpoint
// transformers quantized, and one broken copy per rule, each named in the error. Logit parity of
// the FP8 fixtures with transformers runs with the other fixtures (fixture_parity_test.cpp).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoint/config.h"
#include "checkpoint/fp8_weights.h"
#include "checkpoint/safetensors.h"
#include "qwen35/weights.h"
#include "mtp_fixture.h"
#include "runtime/backend.h"
#include "test_util.h"
#include "util/fp8.h"

namespace specd::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const Checkpoint& Ops() {
  static std::unique_ptr<Checkpoint> ck = [] {
    auto c = Checkpoint::Open(std::string(SPECD_FIXTURES) + "/fp8/ops.safetensors");
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(c).value() : nullptr;
  }();
  return *ck;
}

std::vector<uint8_t> U8(const Checkpoint& ck, const std::string& name) {
  const TensorInfo* t = ck.Find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  std::vector<uint8_t> v(t->nbytes);
  std::memcpy(v.data(), t->data, t->nbytes);
  return v;
}

std::vector<float> F(const Checkpoint& ck, const std::string& name) {
  auto v = ck.ReadF32(name);
  EXPECT_TRUE(v.ok()) << v.status().ToString();
  return v.ok() ? *v : std::vector<float>{};
}

bool SameBits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

TEST(Fp8Codec, DecodesEveryByteAsTorch) {
  const auto table = F(Ops(), "decode_table");
  const auto nan = U8(Ops(), "decode_is_nan");
  ASSERT_EQ(table.size(), 256u);
  int nans = 0;
  for (int b = 0; b < 256; ++b) {
    const float got = Fp8E4M3ToF32(static_cast<uint8_t>(b));
    EXPECT_EQ(std::isnan(got), nan[b] != 0) << b;
    EXPECT_EQ(Fp8E4M3IsNan(static_cast<uint8_t>(b)), nan[b] != 0) << b;
    if (!std::isnan(got)) {
      EXPECT_TRUE(SameBits(got, table[b])) << b << ": " << got << " vs " << table[b];
    }
    nans += nan[b];
  }
  EXPECT_EQ(nans, 2);  // e4m3fn: one NaN per sign, no infinities
}

TEST(Fp8Codec, EncodesAsTorch) {
  const auto in = F(Ops(), "cast_in");
  const auto want = U8(Ops(), "cast_out");
  ASSERT_EQ(in.size(), want.size());
  ASSERT_GT(in.size(), 10000u);
  int wrong = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    if (F32ToFp8E4M3(in[i]) != want[i] && ++wrong <= 5) {
      ADD_FAILURE() << in[i] << " -> " << int(F32ToFp8E4M3(in[i])) << ", torch " << int(want[i]);
    }
  }
  EXPECT_EQ(wrong, 0);
  EXPECT_TRUE(Fp8E4M3IsNan(F32ToFp8E4M3(NAN)));
  EXPECT_EQ(F32ToFp8E4M3(500.f), 0x7e);  // saturates, as torch's CPU cast
  EXPECT_EQ(F32ToFp8E4M3(-INFINITY), 0xfe);
}

// transformers' quantizer on bf16 weights: the same bytes, the same scales, bit for bit.
TEST(Fp8Blocks, QuantizeEqualsTransformers) {
  for (auto [tag, block] : {std::pair{"b128", Fp8Blocks{128, 128}}, std::pair{"b64", Fp8Blocks{64, 64}}}) {
    SCOPED_TRACE(tag);
    const std::string p = std::string("quant_") + tag + "_";
    const TensorInfo* src = Ops().Find(p + "src");
    ASSERT_NE(src, nullptr);
    const int64_t rows = src->shape[0], cols = src->shape[1];
    const auto w = F(Ops(), p + "src");
    std::vector<uint8_t> q(w.size());
    std::vector<float> s(static_cast<size_t>(Fp8ScaleRows(rows, block) * Fp8ScaleCols(cols, block)));
    QuantizeFp8(w.data(), rows, cols, block, q.data(), s.data());
    EXPECT_EQ(q, U8(Ops(), p + "fp8"));
    const auto want_s = F(Ops(), p + "scale_inv");
    ASSERT_EQ(s.size(), want_s.size());
    for (size_t i = 0; i < s.size(); ++i) EXPECT_TRUE(SameBits(s[i], want_s[i])) << i << ": " << s[i];
    EXPECT_EQ(s[0], 1.f);  // the fixture's all-zero first block
    std::vector<float> back(w.size());
    DequantizeFp8(q.data(), s.data(), rows, cols, block, back.data());
    const auto want_back = F(Ops(), p + "dequant");
    int wrong = 0;
    for (size_t i = 0; i < back.size(); ++i) wrong += !SameBits(back[i], want_back[i]);
    EXPECT_EQ(wrong, 0);
  }
}

// Blocks cut short by the matrix edge (200 x 300 in 128 x 128 blocks: a 2 x 3 grid).
TEST(Fp8Blocks, PartialEdgeBlocks) {
  const auto q = U8(Ops(), "partial_fp8");
  const auto s = F(Ops(), "partial_scale_inv");
  const auto want = F(Ops(), "partial_dequant");
  ASSERT_EQ(q.size(), 200u * 300u);
  std::vector<float> got(q.size());
  DequantizeFp8(q.data(), s.data(), 200, 300, {128, 128}, got.data());
  int wrong = 0;
  for (size_t i = 0; i < got.size(); ++i) wrong += !SameBits(got[i], want[i]);
  EXPECT_EQ(wrong, 0);

  // Quantizing such a matrix: every block's largest magnitude lands on 448 exactly, and the
  // round trip is within half an e4m3 step (2^-4 relative) of each value.
  const auto w = RandomVec(200 * 300, 3, 2.f);
  std::vector<uint8_t> wq(w.size());
  std::vector<float> ws(6);
  QuantizeFp8(w.data(), 200, 300, {128, 128}, wq.data(), ws.data());
  for (int br = 0; br < 2; ++br) {
    for (int bc = 0; bc < 3; ++bc) {
      float best = 0;
      for (int r = br * 128; r < std::min(200, br * 128 + 128); ++r) {
        for (int c = bc * 128; c < std::min(300, bc * 128 + 128); ++c) {
          best = std::max(best, std::fabs(Fp8E4M3ToF32(wq[r * 300 + c])));
        }
      }
      EXPECT_EQ(best, 448.f) << br << "," << bc;
    }
  }
  auto rt = w;
  RoundTripFp8(rt, 200, 300, {128, 128});
  for (size_t i = 0; i < w.size(); ++i) {
    // Half a step: 2^-4 of the value for normals, half the 2^-9 subnormal step (in the scaled
    // domain) below 2^-6.
    const float half_subnormal = ws[(i / 300 / 128) * 3 + (i % 300) / 128] * std::ldexp(1.f, -10);
    EXPECT_LE(std::fabs(rt[i] - w[i]), std::max(std::fabs(w[i]) / 16.f, half_subnormal)) << i;
  }
}

TEST(Fp8Blocks, ProjectionNamesAsQwensReleases) {
  for (const char* n : {"model.layers.3.self_attn.q_proj.weight", "model.layers.0.linear_attn.in_proj_qkv.weight",
                        "model.layers.0.linear_attn.in_proj_z.weight", "model.layers.0.linear_attn.out_proj.weight",
                        "model.layers.1.mlp.experts.7.down_proj.weight", "model.layers.1.mlp.shared_expert.up_proj.weight",
                        "model.layers.1.mlp.experts.gate_up_proj", "mtp.layers.0.self_attn.o_proj.weight"}) {
    EXPECT_TRUE(IsFp8Projection(n)) << n;
  }
  for (const char* n : {"model.embed_tokens.weight", "lm_head.weight", "model.layers.0.linear_attn.in_proj_a.weight",
                        "model.layers.0.linear_attn.in_proj_b.weight", "model.layers.1.mlp.gate.weight",
                        "model.layers.1.mlp.shared_expert_gate.weight", "model.layers.0.linear_attn.conv1d.weight",
                        "model.layers.0.input_layernorm.weight", "mtp.fc.weight"}) {
    EXPECT_FALSE(IsFp8Projection(n)) << n;
  }
}

// ---- quantization_config ----

json Tiny() {
  std::ifstream in(ModelDir("dense") + "/config.json");
  return json::parse(in);
}

TEST(Fp8Config, ParsesQwensLayout) {
  json c = Tiny();
  c["quantization_config"] = {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"},
                              {"weight_block_size", {128, 64}}, {"modules_to_not_convert", {"lm_head"}}};
  auto got = ParseModelConfig(c);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ASSERT_TRUE(got->fp8.has_value());
  EXPECT_EQ(got->fp8->rows, 128);
  EXPECT_EQ(got->fp8->cols, 64);
  EXPECT_FALSE(ParseModelConfig(Tiny())->fp8.has_value());

  // The multimodal layout: quantization_config at the top, the model under text_config.
  json mm = {{"model_type", "qwen3_5"}, {"text_config", Tiny()}, {"quantization_config", c["quantization_config"]}};
  mm["text_config"]["model_type"] = "qwen3_5_text";
  auto m = ParseModelConfig(mm);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  ASSERT_TRUE(m->fp8.has_value());
  EXPECT_EQ(*m->fp8, (Fp8Blocks{128, 64}));
}

TEST(Fp8Config, RefusesWhatItCannotRead) {
  struct Bad {
    json q;
    const char* says;
  };
  const json ok = {{"quant_method", "fp8"}, {"weight_block_size", {128, 128}}};
  auto with = [&](const char* k, json v) {
    json q = ok;
    q[k] = std::move(v);
    return q;
  };
  json no_block = ok;
  no_block.erase("weight_block_size");
  for (const Bad& b : {Bad{with("quant_method", "gptq"), "quant_method 'gptq'"},
                       Bad{with("quant_method", "compressed-tensors"), "'compressed-tensors'"},
                       Bad{with("weight_block_size", {96, 128}), "weight_block_size [96, 128]"},
                       Bad{with("weight_block_size", {256, 256}), "weight_block_size [256, 256]"},
                       Bad{with("weight_block_size", {128}), "weight_block_size [128]"},
                       Bad{with("fmt", "e5m2"), "format 'e5m2'"},
                       Bad{with("activation_scheme", "static"), "activation_scheme 'static'"},
                       Bad{with("scale_fmt", "ue8m0"), "scale_fmt 'ue8m0'"},
                       Bad{no_block, "per-tensor"},
                       Bad{json("fp8"), "must be an object"}}) {
    json c = Tiny();
    c["quantization_config"] = b.q;
    auto got = ParseModelConfig(c);
    ASSERT_FALSE(got.ok()) << b.q.dump();
    EXPECT_TRUE(Contains(got.status().message(), b.says));
  }
}

// ---- loading ----

// A rewritten copy of a fixture checkpoint (raw bytes, any dtype), in a temp dir.
class Fp8Checkpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "specd_fp8_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  static std::map<std::string, TensorToWrite> Raw(const std::string& model_dir) {
    std::map<std::string, TensorToWrite> out;
    auto ck = Checkpoint::Open(model_dir);
    EXPECT_TRUE(ck.ok()) << ck.status().ToString();
    for (const auto& name : (*ck)->Names()) {
      const TensorInfo* t = (*ck)->Find(name);
      TensorToWrite w{t->dtype, t->shape, std::vector<std::byte>(t->data, t->data + t->nbytes)};
      out[name] = std::move(w);
    }
    return out;
  }
  // Writes `tensors` with the config of `from` (edited by `edit`) as a checkpoint; returns its dir.
  std::string Write(const std::string& from, const std::map<std::string, TensorToWrite>& tensors,
                    const std::function<void(json&)>& edit = {}) {
    const std::string d = dir_ + "/m" + std::to_string(++n_);
    fs::create_directories(d);
    std::ifstream in(from + "/config.json");
    json c = json::parse(in);
    if (edit) edit(c);
    std::ofstream(d + "/config.json") << c.dump();
    EXPECT_TRUE(SaveSafetensors(d + "/model.safetensors", tensors).ok());
    return d;
  }
  Status LoadStatus(const std::string& d) {
    auto m = Qwen35Model::Load(d, be_.get());
    return m.ok() ? Status::Ok() : m.status();
  }
  std::vector<float> Logits(const std::string& d, const LoadOptions& opt = {}) {
    auto m = Qwen35Model::Load(d, be_.get(), opt);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    if (!m.ok()) return {};
    CacheOptions o;
    o.max_ctx = 64;
    auto cache = std::move((*m)->NewCache(o)).value();
    return RunForward(**m, *cache, *cache->AllocSlot(), LoadRefs("dense").Ids("prompt_ids"));
  }

  std::unique_ptr<Backend> be_ = MakeCpuBackend();
  std::string dir_;
  int n_ = 0;
};

TEST_F(Fp8Checkpoint, FusedFp8ExpertsEqualPerExpertOnes) {
  const std::string src = ModelDir("moe_fp8");
  auto t = Raw(src);
  auto cfg = LoadModelConfig(src);
  ASSERT_TRUE(cfg.ok());
  const int E = cfg->num_experts;
  int fused = 0;
  for (int l = 0; l < cfg->num_hidden_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.mlp.experts.", l);
    TensorToWrite gu{DType::kF8E4M3, {}, {}}, gus{DType::kBF16, {}, {}}, dn{DType::kF8E4M3, {}, {}},
        dns{DType::kBF16, {}, {}};
    for (int e = 0; e < E; ++e) {
      const std::string q = p + std::to_string(e) + ".";
      for (const char* part : {"gate_proj", "up_proj"}) {
        auto& w = t.at(q + part + ".weight");
        auto& s = t.at(q + part + ".weight_scale_inv");
        gu.bytes.insert(gu.bytes.end(), w.bytes.begin(), w.bytes.end());
        gus.bytes.insert(gus.bytes.end(), s.bytes.begin(), s.bytes.end());
      }
      auto& w = t.at(q + "down_proj.weight");
      auto& s = t.at(q + "down_proj.weight_scale_inv");
      dn.bytes.insert(dn.bytes.end(), w.bytes.begin(), w.bytes.end());
      dns.bytes.insert(dns.bytes.end(), s.bytes.begin(), s.bytes.end());
      const std::vector<int64_t> gshape = t.at(q + "gate_proj.weight_scale_inv").shape;
      const std::vector<int64_t> dshape = t.at(q + "down_proj.weight_scale_inv").shape;
      gu.shape = {E, 2 * t.at(q + "gate_proj.weight").shape[0], t.at(q + "gate_proj.weight").shape[1]};
      gus.shape = {E, 2 * gshape[0], gshape[1]};
      dn.shape = {E, t.at(q + "down_proj.weight").shape[0], t.at(q + "down_proj.weight").shape[1]};
      dns.shape = {E, dshape[0], dshape[1]};
      for (const char* part : {"gate_proj", "up_proj", "down_proj"}) {
        t.erase(q + part + ".weight");
        t.erase(q + part + ".weight_scale_inv");
      }
    }
    t[p + "gate_up_proj"] = std::move(gu);
    t[p + "gate_up_proj_scale_inv"] = std::move(gus);
    t[p + "down_proj"] = std::move(dn);
    t[p + "down_proj_scale_inv"] = std::move(dns);
    ++fused;
  }
  ASSERT_GT(fused, 0);
  const auto want = Logits(src);
  ASSERT_FALSE(want.empty());
  EXPECT_EQ(Logits(Write(src, t)), want);
}

// --quantize fp8 on the fp32 checkpoint = the checkpoint transformers quantized from it (the
// projections bit for bit; the fixture's other tensors are bf16 there, fp32 here).
TEST_F(Fp8Checkpoint, QuantizeAtLoadEqualsTransformersCheckpoint) {
  auto cfg = LoadModelConfig(ModelDir("dense"));
  ASSERT_TRUE(cfg.ok());
  auto plain = Checkpoint::Open(ModelDir("dense"));
  auto fp8 = Checkpoint::Open(ModelDir("dense_fp8"));
  ASSERT_TRUE(plain.ok() && fp8.ok());
  auto fp8_cfg = LoadModelConfig(ModelDir("dense_fp8"));
  ASSERT_TRUE(fp8_cfg.ok() && fp8_cfg->fp8.has_value());
  LoadOptions q;
  q.quantize_fp8 = fp8_cfg->fp8;
  auto a = LoadWeights(*cfg, **plain, be_.get(), q);
  auto b = LoadWeights(*fp8_cfg, **fp8, be_.get());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->fp8_tensors, 25);  // as many as transformers quantized (refs.json)
  EXPECT_EQ(b->fp8_tensors, 25);
  int compared = 0;
  for (size_t l = 0; l < a->layers.size(); ++l) {
    const auto& x = a->layers[l];
    const auto& y = b->layers[l];
    std::vector<std::pair<const Tensor*, const Tensor*>> pairs = {
        {&x.mlp.gate, &y.mlp.gate}, {&x.mlp.up, &y.mlp.up}, {&x.mlp.down, &y.mlp.down}};
    if (x.type == LayerType::kLinearAttention) {
      pairs.insert(pairs.end(), {{&x.gdn.in_qkv, &y.gdn.in_qkv}, {&x.gdn.in_z, &y.gdn.in_z}, {&x.gdn.out, &y.gdn.out}});
    } else {
      pairs.insert(pairs.end(), {{&x.attn.q, &y.attn.q}, {&x.attn.k, &y.attn.k}, {&x.attn.v, &y.attn.v},
                                 {&x.attn.o, &y.attn.o}});
    }
    for (auto [p, r] : pairs) {
      const auto u = be_->DownloadF32(*p), v = be_->DownloadF32(*r);
      ASSERT_EQ(u.size(), v.size());
      size_t diff = 0, first = u.size();
      for (size_t i = 0; i < u.size(); ++i) {
        if (!SameBits(u[i], v[i]) && diff++ == 0) first = i;
      }
      EXPECT_EQ(diff, 0u) << "layer " << l << ", first at " << first << ": " << u[first] << " vs " << v[first];
      ++compared;
    }
  }
  EXPECT_EQ(compared, 25);
  // Not a no-op: the rounded weights differ from the fp32 ones.
  auto raw = LoadWeights(*cfg, **plain, be_.get());
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(raw->fp8_tensors, 0);
  EXPECT_NE(be_->DownloadF32(raw->layers[0].mlp.down), be_->DownloadF32(a->layers[0].mlp.down));
}

// The MTP head loads the way its model did: with --quantize fp8 its decoder layer's projections
// are rounded like the backbone's, its fc (kept in BF16 by Qwen's releases) is not.
TEST_F(Fp8Checkpoint, QuantizeAtLoadReachesTheMtpHead) {
  const std::string dir = MtpCheckpoint("dense");
  LoadOptions q;
  q.quantize_fp8 = Fp8Blocks{64, 64};
  auto plain = Qwen35Model::Load(dir, be_.get());
  auto rounded = Qwen35Model::Load(dir, be_.get(), q);
  ASSERT_TRUE(plain.ok() && rounded.ok());
  ASSERT_TRUE((*plain)->LoadMtpHead(dir).ok());
  ASSERT_TRUE((*rounded)->LoadMtpHead(dir).ok());
  const MtpWeights& a = *(*plain)->mtp_head();
  const MtpWeights& b = *(*rounded)->mtp_head();
  auto o = be_->DownloadF32(a.layer.attn.o);
  const auto H = (*plain)->config().hidden_size;
  RoundTripFp8(o, H, static_cast<int64_t>(o.size()) / H, {64, 64});
  EXPECT_EQ(be_->DownloadF32(b.layer.attn.o), o);
  EXPECT_NE(be_->DownloadF32(b.layer.attn.o), be_->DownloadF32(a.layer.attn.o));
  EXPECT_EQ(be_->DownloadF32(b.fc_hidden), be_->DownloadF32(a.fc_hidden));
  fs::remove_all(dir);
}

TEST_F(Fp8Checkpoint, BrokenCopiesNameTheTensor) {
  const std::string src = ModelDir("dense_fp8");
  const std::string w = "model.layers.0.mlp.down_proj.weight";
  const std::string s = w + "_scale_inv";
  {
    auto t = Raw(src);
    t.erase(s);
    const Status st = LoadStatus(Write(src, t));
    EXPECT_TRUE(Contains(st.message(), "'" + w + "' is F8_E4M3 but its scale '" + s + "' is missing"));
  }
  {
    auto t = Raw(src);
    t[s].shape = {8, 1};
    const Status st = LoadStatus(Write(src, t));
    EXPECT_TRUE(Contains(st.message(), "FP8 scale '" + s + "' has shape [8, 1], expected [2, 4]"));
  }
  {
    auto t = Raw(src);
    t[s].dtype = DType::kI32;
    const Status st = LoadStatus(Write(src, t));
    EXPECT_TRUE(Contains(st.message(), "FP8 scale '" + s + "' has dtype I32"));
  }
  {
    auto t = Raw(src);  // a scale beside a weight that is not FP8: mixed dtypes
    const std::string bw = "model.layers.0.linear_attn.in_proj_a.weight";
    t[bw + "_scale_inv"] = F32Tensor({1, 2}, {1.f, 1.f});
    const Status st = LoadStatus(Write(src, t));
    EXPECT_TRUE(Contains(st.message(), "'" + bw + "' is BF16 but has an FP8 scale"));
  }
  {
    auto t = Raw(src);  // FP8 tensors, no quantization_config
    const Status st = LoadStatus(Write(src, t, [](json& c) { c.erase("quantization_config"); }));
    EXPECT_TRUE(Contains(st.message(), "is F8_E4M3 but config.json has no FP8 quantization_config"));
  }
  {
    auto t = Raw(src);
    t[w].bytes[5] = std::byte{0x7f};
    const Status st = LoadStatus(Write(src, t));
    EXPECT_TRUE(Contains(st.message(), "FP8 tensor '" + w + "' holds NaN at element 5"));
  }
  {
    auto t = Raw(src);
    std::vector<float> bad(8, 0.01f);
    bad[3] = -1.f;
    t[s] = F32Tensor({2, 4}, bad);
    const Status st = LoadStatus(Write(src, t));
    EXPECT_TRUE(Contains(st.message(), "FP8 scale '" + s + "' holds -1"));
  }
  {
    auto t = Raw(src);  // the block size the scales were made for is not the config's
    const Status st = LoadStatus(Write(src, t, [](json& c) { c["quantization_config"]["weight_block_size"] = {32, 32}; }));
    EXPECT_TRUE(Contains(st.message(), "in 32x32 blocks"));
  }
  // The unbroken copy loads, so each failure above is the edit's.
  EXPECT_TRUE(LoadStatus(Write(src, Raw(src))).ok());
}

}  // namespace
}  // namespace specd::testing
