// The CPU reference GEMM gives every row the same bits whatever the number of rows in the call:
// a draft model's probabilities (which the rejection rule reads) must not depend on how many
// sequences share its forward, or a seeded request's tokens depend on the traffic around it.
#include <gtest/gtest.h>

#include <vector>

#include "runtime/cpu_gemm.h"
#include "test_util.h"

namespace specd::testing {
namespace {

TEST(CpuSgemm, EachRowIsIndependentOfTheRowCount) {
  // Shapes of the fixture and demo models' projections and of a 0.8B-sized one.
  for (const auto& [m, k] : std::vector<std::pair<int64_t, int64_t>>{{512, 64}, {96, 64}, {4096, 256}, {1024, 1024}}) {
    const int64_t n_max = 37;
    const auto x = RandomVec(static_cast<size_t>(n_max * k), 3 + m);
    const auto w = RandomVec(static_cast<size_t>(m * k), 5 + k);
    // Each row alone: the reference bits.
    std::vector<float> alone(static_cast<size_t>(n_max * m));
    for (int64_t i = 0; i < n_max; ++i) CpuSgemm(x.data() + i * k, w.data(), alone.data() + i * m, 1, m, k);
    for (int64_t n = 2; n <= n_max; ++n) {
      std::vector<float> y(static_cast<size_t>(n * m));
      CpuSgemm(x.data(), w.data(), y.data(), n, m, k);
      for (int64_t i = 0; i < n; ++i) {
        const bool same = std::equal(y.begin() + i * m, y.begin() + (i + 1) * m, alone.begin() + i * m);
        ASSERT_TRUE(same) << "m " << m << " k " << k << ": row " << i << " of " << n << " differs from the row alone";
      }
    }
  }
}

}  // namespace
}  // namespace specd::testing
