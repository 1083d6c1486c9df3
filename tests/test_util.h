// Shared helpers for the engine tests: fixture paths, reference tensors, error metrics.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "checkpoint/safetensors.h"
#include "qwen35/model.h"

namespace specd::testing {

// Shows the whole message on failure, which a plain find() != npos would not.
inline ::testing::AssertionResult Contains(const std::string& message, const std::string& part) {
  if (message.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << message << "\" does not contain \"" << part << "\"";
}

inline std::string FixtureDir(const std::string& case_name) {
  return std::string(SPECD_FIXTURES) + "/qwen35-tiny/" + case_name;
}
inline std::string ModelDir(const std::string& case_name) { return FixtureDir(case_name) + "/model"; }

struct Refs {
  std::unique_ptr<Checkpoint> ck;
  std::vector<float> F(const std::string& name) const {
    auto v = ck->ReadF32(name);
    EXPECT_TRUE(v.ok()) << v.status().ToString();
    return v.ok() ? *v : std::vector<float>{};
  }
  std::vector<int32_t> Ids(const std::string& name) const {
    auto v = ck->ReadI64(name);
    EXPECT_TRUE(v.ok()) << v.status().ToString();
    std::vector<int32_t> out;
    if (v.ok()) out.assign(v->begin(), v->end());
    return out;
  }
};

inline Refs LoadRefs(const std::string& case_name) {
  auto ck = Checkpoint::Open(FixtureDir(case_name) + "/refs.safetensors");
  EXPECT_TRUE(ck.ok()) << ck.status().ToString();
  return Refs{ck.ok() ? std::move(ck).value() : nullptr};
}

// max over rows of ||got - ref||_2 / ||ref||_2, rows of length `width`.
inline double MaxRowRelErr(const std::vector<float>& got, const std::vector<float>& ref, int64_t width) {
  EXPECT_EQ(got.size(), ref.size());
  if (got.size() != ref.size() || width <= 0) return INFINITY;
  double worst = 0;
  for (size_t r = 0; r * width < ref.size(); ++r) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < width; ++i) {
      const double a = got[r * width + i], b = ref[r * width + i];
      num += (a - b) * (a - b);
      den += b * b;
    }
    const double e = std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
    if (!(e <= worst)) worst = std::isnan(e) ? INFINITY : e;  // NaN anywhere must fail every tolerance
  }
  return worst;
}

inline double RelL2(const std::vector<float>& got, const std::vector<float>& ref) {
  return MaxRowRelErr(got, ref, static_cast<int64_t>(ref.size()));
}

inline std::vector<float> RandomVec(size_t n, uint64_t seed, float scale = 1.f) {
  std::vector<float> v(n);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& x : v) {
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    x = scale * (static_cast<float>(s >> 40) / static_cast<float>(1 << 24) * 2.f - 1.f);
  }
  return v;
}

// Runs one forward of `tokens` on `slot` and returns the logits rows as fp32.
inline std::vector<float> RunForward(Qwen35Model& m, ModelCache& c, int slot, std::vector<int32_t> tokens,
                                     bool all_logits = true, StateMode mode = StateMode::kUpdate) {
  auto o = m.Forward({SeqInput{slot, std::move(tokens), mode, all_logits}}, c);
  EXPECT_TRUE(o.ok()) << o.status().ToString();
  return o.ok() ? m.backend()->DownloadF32(o->logits) : std::vector<float>{};
}

// Deterministic token ids in [10, 4010) (inside the demo pair's 4096), different per seed.
inline std::vector<int32_t> DemoIds(size_t n, uint64_t seed) {
  std::vector<int32_t> v(n);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 7;
  for (auto& t : v) {
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    t = static_cast<int32_t>((s >> 20) % 4000) + 10;
  }
  return v;
}

inline int Argmax(const float* p, int64_t n) {
  int best = 0;
  for (int64_t i = 1; i < n; ++i) if (p[i] > p[best]) best = static_cast<int>(i);
  return best;
}

}  // namespace specd::testing
