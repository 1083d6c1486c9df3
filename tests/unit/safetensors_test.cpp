// Safetensors reader/writer: round trips, the real fixtures, sharded checkpoints, and one
// deliberately broken file per validation rule. Broken files are built byte by byte here (not with
// SaveSafetensors), so the reader is not only checked against its own writer.
#include "checkpoint/safetensors.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace specd {
namespace {

namespace fs = std::filesystem;

const std::string kFixtures = SPECD_FIXTURES;
const std::string kDenseDir = kFixtures + "/qwen35-tiny/dense/model";
const std::string kDenseFile = kDenseDir + "/model.safetensors";
const std::string kBf16Dir = kFixtures + "/qwen35-tiny/dense_bf16/model";
const std::string kDenseRefs = kFixtures + "/qwen35-tiny/dense/refs.safetensors";

// Shows the whole message on failure, which a plain find() != npos would not.
::testing::AssertionResult Contains(const std::string& message, const std::string& part) {
  if (message.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << message << "\" does not contain \"" << part << "\"";
}

std::vector<std::byte> Bytes(const void* p, size_t n) {
  const auto* b = static_cast<const std::byte*>(p);
  return std::vector<std::byte>(b, b + n);
}
template <typename T>
std::vector<std::byte> BytesOf(const std::vector<T>& v) {
  return Bytes(v.data(), v.size() * sizeof(T));
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void WriteAll(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(content.data(), static_cast<std::streamsize>(content.size()));
  ASSERT_TRUE(out.good()) << path;
}

// A safetensors file from a raw header string and data buffer, independent of SaveSafetensors.
void WriteRaw(const std::string& path, const std::string& header, size_t data_bytes) {
  uint64_t n = header.size();
  std::string content(reinterpret_cast<const char*>(&n), 8);
  content += header;
  content.append(data_bytes, '\0');
  WriteAll(path, content);
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "specd_st_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr) << tmpl;
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  // Opens `header` + `data_bytes` zero bytes as a file and returns the failure.
  Status OpenRaw(const std::string& header, size_t data_bytes) {
    const std::string p = Path("broken.safetensors");
    WriteRaw(p, header, data_bytes);
    auto f = SafetensorsFile::Open(p);
    EXPECT_FALSE(f.ok()) << "header accepted: " << header;
    return f.status();
  }

  std::string dir_;
};

// ------------------------------------------------------------------------------------------
// Round trip

TEST_F(SafetensorsTest, RoundTripAllDtypes) {
  const std::vector<float> f32 = {1.5f, -2.25f, 0.0f, 3.0e-8f, 1.0e30f, -7.0f};
  // Known bit patterns: 1.0, -3.0, 0.15625, +inf.
  const std::vector<uint16_t> bf16 = {0x3F80, 0xC040, 0x3E20, 0x7F80};
  // 1.0, -2.0, 0.333251953125 (nearest f16 to 1/3), 2^-24 (smallest subnormal), 65504 (max).
  const std::vector<uint16_t> f16 = {0x3C00, 0xC000, 0x3555, 0x0001, 0x7BFF};
  const std::vector<int64_t> i64 = {0, -1, int64_t{1} << 40, 151643};
  const std::vector<int32_t> i32 = {7, -8, 2147483647};

  std::map<std::string, TensorToWrite> tensors;
  tensors["a.f32"] = F32Tensor({2, 3}, f32);
  tensors["b.bf16"] = {DType::kBF16, {2, 2}, BytesOf(bf16)};
  tensors["c.f16"] = {DType::kF16, {5}, BytesOf(f16)};
  tensors["d.i64"] = {DType::kI64, {4}, BytesOf(i64)};
  tensors["e.i32"] = {DType::kI32, {1, 3}, BytesOf(i32)};
  tensors["f.empty"] = {DType::kF32, {0, 4}, {}};
  const std::string p = Path("rt.safetensors");
  ASSERT_TRUE(SaveSafetensors(p, tensors, {{"format", "pt"}}).ok());

  auto f = SafetensorsFile::Open(p);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->path(), p);
  EXPECT_EQ((*f)->metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  ASSERT_EQ((*f)->tensors().size(), 6u);
  const TensorInfo& bi = (*f)->tensors().at("b.bf16");
  EXPECT_EQ(bi.dtype, DType::kBF16);
  EXPECT_EQ(bi.shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(bi.numel(), 4);
  EXPECT_EQ(bi.nbytes, 8u);
  EXPECT_EQ(bi.file, p);
  EXPECT_EQ(std::memcmp(bi.data, bf16.data(), 8), 0);
  EXPECT_EQ((*f)->tensors().at("f.empty").numel(), 0);
  // Every tensor sits at a multiple of its element size, so kernels could use it in place.
  for (const auto& [name, t] : (*f)->tensors()) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % DTypeSize(t.dtype), 0u) << name;
  }

  auto ck = Checkpoint::Open(p);
  ASSERT_TRUE(ck.ok()) << ck.status().ToString();
  EXPECT_EQ((*ck)->dir(), dir_);
  EXPECT_EQ((*ck)->Names(),
            (std::vector<std::string>{"a.f32", "b.bf16", "c.f16", "d.i64", "e.i32", "f.empty"}));

  auto rf = (*ck)->ReadF32("a.f32", {2, 3});
  ASSERT_TRUE(rf.ok()) << rf.status().ToString();
  EXPECT_EQ(*rf, f32);
  auto rb = (*ck)->ReadF32("b.bf16");
  ASSERT_TRUE(rb.ok()) << rb.status().ToString();
  EXPECT_EQ(*rb, (std::vector<float>{1.0f, -3.0f, 0.15625f, INFINITY}));
  auto rh = (*ck)->ReadF32("c.f16", {5});
  ASSERT_TRUE(rh.ok()) << rh.status().ToString();
  EXPECT_EQ(*rh, (std::vector<float>{1.0f, -2.0f, 0.333251953125f, std::ldexp(1.0f, -24), 65504.0f}));
  auto ri = (*ck)->ReadI64("d.i64");
  ASSERT_TRUE(ri.ok()) << ri.status().ToString();
  EXPECT_EQ(*ri, i64);
  auto ri32 = (*ck)->ReadI64("e.i32");
  ASSERT_TRUE(ri32.ok()) << ri32.status().ToString();
  EXPECT_EQ(*ri32, (std::vector<int64_t>{7, -8, 2147483647}));
  auto re = (*ck)->ReadF32("f.empty", {0, 4});
  ASSERT_TRUE(re.ok()) << re.status().ToString();
  EXPECT_TRUE(re->empty());
}

TEST_F(SafetensorsTest, WrittenLayoutFollowsFormat) {
  std::map<std::string, TensorToWrite> tensors;
  tensors["z"] = {DType::kBF16, {3}, BytesOf(std::vector<uint16_t>{1, 2, 3})};
  tensors["a"] = F32Tensor({2}, {1.0f, 2.0f});
  tensors["m"] = {DType::kI64, {1}, BytesOf(std::vector<int64_t>{42})};
  const std::string p = Path("layout.safetensors");
  ASSERT_TRUE(SaveSafetensors(p, tensors, {{"k", "v"}}).ok());

  const std::string raw = ReadAll(p);
  ASSERT_GE(raw.size(), 8u);
  uint64_t n;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);  // data buffer starts 8-aligned
  ASSERT_LE(8 + n, raw.size());
  const auto header = nlohmann::json::parse(raw.substr(8, n));
  std::vector<std::string> keys;
  for (const auto& [k, v] : header.items()) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{"__metadata__", "a", "m", "z"}));
  EXPECT_EQ(header["__metadata__"]["k"], "v");
  EXPECT_EQ(header["a"]["dtype"], "F32");
  EXPECT_EQ(header["z"]["shape"], nlohmann::json::array({3}));
  // Contiguous, no gaps: 8 + 8 + 6 bytes in total.
  EXPECT_EQ(raw.size() - 8 - n, 22u);
  uint64_t total = 0;
  for (const char* k : {"a", "m", "z"}) {
    total += header[k]["data_offsets"][1].get<uint64_t>() - header[k]["data_offsets"][0].get<uint64_t>();
  }
  EXPECT_EQ(total, 22u);
  // The I64 value is little-endian at its recorded offset.
  const uint64_t mo = header["m"]["data_offsets"][0].get<uint64_t>();
  int64_t m;
  std::memcpy(&m, raw.data() + 8 + n + mo, 8);
  EXPECT_EQ(m, 42);
}

TEST_F(SafetensorsTest, SaveRejectsSizeMismatch) {
  std::map<std::string, TensorToWrite> tensors;
  tensors["w"] = F32Tensor({2, 2}, {1.0f, 2.0f, 3.0f});
  const std::string p = Path("bad_save.safetensors");
  Status s = SaveSafetensors(p, tensors);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "'w'"));
  EXPECT_TRUE(Contains(s.message(), p));
}

// ------------------------------------------------------------------------------------------
// Real fixtures (written by the Python safetensors library)

TEST(SafetensorsFixture, DenseF32) {
  auto ck = Checkpoint::Open(kDenseDir);
  ASSERT_TRUE(ck.ok()) << ck.status().ToString();
  EXPECT_EQ((*ck)->dir(), kDenseDir);
  const std::vector<std::string> names = (*ck)->Names();
  EXPECT_EQ(names.size(), 56u);
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(names.front(), "lm_head.weight");
  EXPECT_NE(std::find(names.begin(), names.end(), "model.layers.3.self_attn.q_proj.weight"), names.end());

  const TensorInfo* emb = (*ck)->Find("model.embed_tokens.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->dtype, DType::kF32);
  EXPECT_EQ(emb->shape, (std::vector<int64_t>{512, 128}));
  EXPECT_EQ(emb->nbytes, 512u * 128u * 4u);
  EXPECT_EQ(emb->file, kDenseDir + "/model.safetensors");
  EXPECT_EQ((*ck)->Find("model.embed_tokens"), nullptr);

  auto v = (*ck)->ReadF32("model.embed_tokens.weight", {512, 128});
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  ASSERT_EQ(v->size(), 512u * 128u);
  // First values as read by Python's struct module from the file.
  EXPECT_FLOAT_EQ((*v)[0], -0.1117185652256012f);
  EXPECT_FLOAT_EQ((*v)[1], -0.49659010767936707f);
  EXPECT_FLOAT_EQ((*v)[2], 0.16307370364665985f);

  auto norm = (*ck)->ReadF32("model.norm.weight", {128});
  ASSERT_TRUE(norm.ok()) << norm.status().ToString();
  EXPECT_EQ(norm->size(), 128u);
}

TEST(SafetensorsFixture, DenseBf16MatchesF32WithinBf16Rounding) {
  auto bf = Checkpoint::Open(kBf16Dir);
  ASSERT_TRUE(bf.ok()) << bf.status().ToString();
  auto f32 = Checkpoint::Open(kDenseDir);
  ASSERT_TRUE(f32.ok()) << f32.status().ToString();
  EXPECT_EQ((*bf)->Names(), (*f32)->Names());

  const TensorInfo* emb = (*bf)->Find("model.embed_tokens.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->dtype, DType::kBF16);
  EXPECT_EQ(emb->nbytes, 512u * 128u * 2u);

  auto b = (*bf)->ReadF32("model.embed_tokens.weight", {512, 128});
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  // Raw bits 0xbde5, 0xbefe, 0x3e27 in the file.
  EXPECT_EQ((*b)[0], -0.11181640625f);
  EXPECT_EQ((*b)[1], -0.49609375f);
  EXPECT_EQ((*b)[2], 0.1630859375f);
  auto a = (*f32)->ReadF32("model.embed_tokens.weight", {512, 128});
  ASSERT_TRUE(a.ok());
  for (size_t i = 0; i < a->size(); ++i) {
    // bf16 keeps 8 significant bits: round-to-nearest error is at most 2^-9 relative.
    ASSERT_LE(std::fabs((*a)[i] - (*b)[i]), std::ldexp(std::fabs((*a)[i]), -8)) << i;
  }
}

TEST(SafetensorsFixture, RefsPromptIdsAsInt64) {
  auto ck = Checkpoint::Open(kDenseRefs);
  ASSERT_TRUE(ck.ok()) << ck.status().ToString();
  auto ids = (*ck)->ReadI64("prompt_ids");
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  ASSERT_EQ(ids->size(), 45u);
  EXPECT_EQ(std::vector<int64_t>(ids->begin(), ids->begin() + 6),
            (std::vector<int64_t>{84, 234, 379, 460, 70, 384}));
  auto logits = (*ck)->ReadF32("prompt_logits", {45, 512});
  EXPECT_TRUE(logits.ok()) << logits.status().ToString();
}

// ------------------------------------------------------------------------------------------
// Sharded checkpoints

class SafetensorsShardedTest : public SafetensorsTest {
 protected:
  void WriteShards() {
    std::map<std::string, TensorToWrite> s1, s2;
    s1["model.a.weight"] = F32Tensor({2}, {1.0f, 2.0f});
    s1["model.b.weight"] = F32Tensor({1, 2}, {3.0f, 4.0f});
    s2["model.c.weight"] = {DType::kBF16, {2}, BytesOf(std::vector<uint16_t>{0x4000, 0xBF80})};  // 2, -1
    s2["lm_head.weight"] = F32Tensor({3}, {5.0f, 6.0f, 7.0f});
    ASSERT_TRUE(SaveSafetensors(Path("model-00001-of-00002.safetensors"), s1).ok());
    ASSERT_TRUE(SaveSafetensors(Path("model-00002-of-00002.safetensors"), s2).ok());
  }
  void WriteIndex(const nlohmann::json& weight_map) {
    nlohmann::json index = {{"metadata", {{"total_size", 36}}}, {"weight_map", weight_map}};
    WriteAll(Path("model.safetensors.index.json"), index.dump(2));
  }
  nlohmann::json GoodMap() const {
    return {{"model.a.weight", "model-00001-of-00002.safetensors"},
            {"model.b.weight", "model-00001-of-00002.safetensors"},
            {"model.c.weight", "model-00002-of-00002.safetensors"},
            {"lm_head.weight", "model-00002-of-00002.safetensors"}};
  }
};

TEST_F(SafetensorsShardedTest, ResolvesNamesAcrossShards) {
  WriteShards();
  WriteIndex(GoodMap());
  auto ck = Checkpoint::Open(dir_);
  ASSERT_TRUE(ck.ok()) << ck.status().ToString();
  EXPECT_EQ((*ck)->dir(), dir_);
  EXPECT_EQ((*ck)->Names(), (std::vector<std::string>{"lm_head.weight", "model.a.weight", "model.b.weight",
                                                       "model.c.weight"}));
  ASSERT_NE((*ck)->Find("model.b.weight"), nullptr);
  EXPECT_EQ((*ck)->Find("model.b.weight")->file, Path("model-00001-of-00002.safetensors"));
  ASSERT_NE((*ck)->Find("model.c.weight"), nullptr);
  EXPECT_EQ((*ck)->Find("model.c.weight")->file, Path("model-00002-of-00002.safetensors"));

  auto b = (*ck)->ReadF32("model.b.weight", {1, 2});
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(*b, (std::vector<float>{3.0f, 4.0f}));
  auto c = (*ck)->ReadF32("model.c.weight", {2});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(*c, (std::vector<float>{2.0f, -1.0f}));
  auto h = (*ck)->ReadF32("lm_head.weight");
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(*h, (std::vector<float>{5.0f, 6.0f, 7.0f}));

  // The index file can also be named directly.
  auto direct = Checkpoint::Open(Path("model.safetensors.index.json"));
  ASSERT_TRUE(direct.ok()) << direct.status().ToString();
  EXPECT_EQ((*direct)->Names().size(), 4u);
}

TEST_F(SafetensorsShardedTest, MissingShard) {
  WriteShards();
  nlohmann::json m = GoodMap();
  m["model.c.weight"] = "model-00003-of-00003.safetensors";
  WriteIndex(m);
  auto ck = Checkpoint::Open(dir_);
  ASSERT_FALSE(ck.ok());
  EXPECT_EQ(ck.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(ck.status().message(), "model-00003-of-00003.safetensors"));
  EXPECT_TRUE(Contains(ck.status().message(), "model.c.weight"));
  EXPECT_TRUE(Contains(ck.status().message(), "model.safetensors.index.json"));
}

TEST_F(SafetensorsShardedTest, ShardLacksTensor) {
  WriteShards();
  nlohmann::json m = GoodMap();
  m["model.c.weight"] = "model-00001-of-00002.safetensors";  // it lives in shard 2
  WriteIndex(m);
  auto ck = Checkpoint::Open(dir_);
  ASSERT_FALSE(ck.ok());
  EXPECT_EQ(ck.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(ck.status().message(), "'model.c.weight'"));
  EXPECT_TRUE(Contains(ck.status().message(), Path("model-00001-of-00002.safetensors")));
}

TEST_F(SafetensorsShardedTest, BadIndexJson) {
  WriteShards();
  WriteAll(Path("model.safetensors.index.json"), "{\"weight_map\": {\"model.a.weight\": ");
  auto ck = Checkpoint::Open(dir_);
  ASSERT_FALSE(ck.ok());
  EXPECT_EQ(ck.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(ck.status().message(), "bad index JSON"));
  EXPECT_TRUE(Contains(ck.status().message(), Path("model.safetensors.index.json")));

  WriteIndex({{"model.a.weight", 3}});  // shard name must be a string
  ck = Checkpoint::Open(dir_);
  ASSERT_FALSE(ck.ok());
  EXPECT_EQ(ck.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(ck.status().message(), "'model.a.weight'"));
}

TEST_F(SafetensorsShardedTest, DuplicateTensorAcrossShards) {
  WriteShards();
  std::map<std::string, TensorToWrite> s2;
  s2["model.c.weight"] = F32Tensor({1}, {0.0f});
  s2["model.a.weight"] = F32Tensor({2}, {9.0f, 9.0f});  // also in shard 1
  ASSERT_TRUE(SaveSafetensors(Path("model-00002-of-00002.safetensors"), s2).ok());
  WriteIndex({{"model.a.weight", "model-00001-of-00002.safetensors"},
              {"model.c.weight", "model-00002-of-00002.safetensors"}});
  auto ck = Checkpoint::Open(dir_);
  ASSERT_FALSE(ck.ok());
  EXPECT_EQ(ck.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(ck.status().message(), "'model.a.weight'"));
  EXPECT_TRUE(Contains(ck.status().message(), "model-00001-of-00002.safetensors"));
  EXPECT_TRUE(Contains(ck.status().message(), "model-00002-of-00002.safetensors"));
}

// ------------------------------------------------------------------------------------------
// Errors

TEST_F(SafetensorsTest, MissingTensor) {
  auto ck = Checkpoint::Open(kDenseDir);
  ASSERT_TRUE(ck.ok()) << ck.status().ToString();
  auto r = (*ck)->ReadF32("model.layers.9.mlp.up_proj.weight");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(r.status().message(),
            "tensor 'model.layers.9.mlp.up_proj.weight' not found in checkpoint " + kDenseDir);
  auto ri = (*ck)->ReadI64("nope");
  EXPECT_EQ(ri.status().code(), StatusCode::kNotFound);
}

TEST_F(SafetensorsTest, WrongShape) {
  auto ck = Checkpoint::Open(kDenseDir);
  ASSERT_TRUE(ck.ok()) << ck.status().ToString();
  auto r = (*ck)->ReadF32("model.embed_tokens.weight", {128, 512});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), kDenseFile +
                                      ": tensor 'model.embed_tokens.weight' has shape [512, 128], "
                                      "expected [128, 512]");
}

TEST_F(SafetensorsTest, WrongDtypeForReader) {
  auto ck = Checkpoint::Open(kDenseRefs);
  ASSERT_TRUE(ck.ok()) << ck.status().ToString();
  auto f = (*ck)->ReadF32("prompt_ids");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(f.status().message(), "'prompt_ids'"));
  EXPECT_TRUE(Contains(f.status().message(), "I64"));
  EXPECT_TRUE(Contains(f.status().message(), kDenseRefs));
  auto i = (*ck)->ReadI64("prompt_logits");
  ASSERT_FALSE(i.ok());
  EXPECT_EQ(i.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(i.status().message(), "'prompt_logits'"));
}

TEST_F(SafetensorsTest, MissingFile) {
  const std::string p = Path("absent.safetensors");
  auto f = SafetensorsFile::Open(p);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(f.status().message(), p));

  auto ck = Checkpoint::Open(p);
  EXPECT_EQ(ck.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(ck.status().message(), p));

  auto empty_dir = Checkpoint::Open(dir_);  // a directory with no checkpoint in it
  EXPECT_EQ(empty_dir.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(empty_dir.status().message(), dir_));
}

TEST_F(SafetensorsTest, TruncatedFile) {
  const std::string full = ReadAll(kDenseFile);
  ASSERT_GT(full.size(), 10000u);
  const std::string p = Path("model.safetensors");

  // Shorter than the length prefix.
  WriteAll(p, full.substr(0, 5));
  auto f = SafetensorsFile::Open(p);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(f.status().message(), "truncated"));
  EXPECT_TRUE(Contains(f.status().message(), p));

  // Cut inside the header.
  WriteAll(p, full.substr(0, 200));
  f = SafetensorsFile::Open(p);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(f.status().message(), "truncated"));
  EXPECT_TRUE(Contains(f.status().message(), p));

  // Cut inside the data: only the last tensor (model.norm.weight, per the header) is affected.
  WriteAll(p, full.substr(0, full.size() - 100));
  auto ck = Checkpoint::Open(dir_);
  ASSERT_FALSE(ck.ok());
  EXPECT_EQ(ck.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(ck.status().message(), "out of range"));
  EXPECT_TRUE(Contains(ck.status().message(), "'model.norm.weight'"));
  EXPECT_TRUE(Contains(ck.status().message(), p));
}

TEST_F(SafetensorsTest, BadHeaderJson) {
  Status s = OpenRaw("{\"w\": {\"dtype\": \"F32\", ", 0);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "bad header JSON"));
  EXPECT_TRUE(Contains(s.message(), "broken.safetensors"));

  s = OpenRaw("[1, 2]", 0);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "bad header JSON"));

  s = OpenRaw(R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})", 4);  // no shape
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "bad header JSON"));
  EXPECT_TRUE(Contains(s.message(), "'w'"));

  s = OpenRaw(R"({"w": {"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]}})", 4);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "bad header JSON"));
  EXPECT_TRUE(Contains(s.message(), "'w'"));

  s = OpenRaw(R"({"w": {"dtype": 1, "shape": [1], "data_offsets": [0, 4]}})", 4);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "'w'"));

  s = OpenRaw(R"({"__metadata__": {"format": 1}})", 0);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "__metadata__"));
}

TEST_F(SafetensorsTest, DuplicateTensorInHeader) {
  Status s = OpenRaw(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                        "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                     8);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "'w'"));
  EXPECT_TRUE(Contains(s.message(), "broken.safetensors"));
}

TEST_F(SafetensorsTest, UnknownDtype) {
  Status s = OpenRaw(R"({"w": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]}})", 16);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "'F64'"));
  EXPECT_TRUE(Contains(s.message(), "'w'"));
  EXPECT_TRUE(Contains(s.message(), "broken.safetensors"));
}

TEST_F(SafetensorsTest, OverlappingOffsets) {
  Status s = OpenRaw(R"({"first": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                        "second": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
                     24);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "overlapping"));
  EXPECT_TRUE(Contains(s.message(), "'first'"));
  EXPECT_TRUE(Contains(s.message(), "'second'"));
  EXPECT_TRUE(Contains(s.message(), "broken.safetensors"));

  // A small tensor nested inside a big one, with another tensor in between by start offset.
  s = OpenRaw(R"({"big": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]},
                 "mid": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
                 "late": {"dtype": "F32", "shape": [1], "data_offsets": [24, 28]}})",
              32);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "overlapping"));
  EXPECT_TRUE(Contains(s.message(), "'big'"));

  // Touching ranges and empty tensors are fine.
  const std::string p = Path("ok.safetensors");
  WriteRaw(p,
           R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
               "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
               "e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}})",
           8);
  auto ok = SafetensorsFile::Open(p);
  EXPECT_TRUE(ok.ok()) << ok.status().ToString();
}

TEST_F(SafetensorsTest, OutOfRangeOffsets) {
  Status s = OpenRaw(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 12);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(s.message(), "out of range"));
  EXPECT_TRUE(Contains(s.message(), "'w'"));
  EXPECT_TRUE(Contains(s.message(), "broken.safetensors"));

  s = OpenRaw(R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", 16);  // end < begin
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(s.message(), "out of range"));
  EXPECT_TRUE(Contains(s.message(), "'w'"));

  s = OpenRaw(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", 16);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(s.message(), "'w'"));
}

TEST_F(SafetensorsTest, SizeMismatch) {
  Status s = OpenRaw(R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}})", 16);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "'w'"));
  EXPECT_TRUE(Contains(s.message(), "[2, 3]"));
  EXPECT_TRUE(Contains(s.message(), "broken.safetensors"));

  // A shape whose byte size overflows 64 bits must not wrap around to match.
  s = OpenRaw(R"({"w": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 0]}})", 0);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "'w'"));
}

TEST_F(SafetensorsTest, NegativeDimension) {
  Status s = OpenRaw(R"({"w": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}})", 16);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "'w'"));
  EXPECT_TRUE(Contains(s.message(), "-1"));
}

TEST_F(SafetensorsTest, CheckpointPropagatesFileErrors) {
  // A corrupt single-file checkpoint fails Checkpoint::Open with the file's own error.
  const std::string p = Path("model.safetensors");
  WriteRaw(p, R"({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 1]}})", 1);
  auto ck = Checkpoint::Open(dir_);
  ASSERT_FALSE(ck.ok());
  EXPECT_EQ(ck.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(ck.status().message(), p));
  EXPECT_TRUE(Contains(ck.status().message(), "'Q4'"));
}

}  // namespace
}  // namespace specd
