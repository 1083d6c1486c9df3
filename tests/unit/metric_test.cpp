// The shared error metric of the numeric tests (tests/test_util.h) must fail on NaN: a NaN output
// is a realistic kernel failure, and max() with NaN silently keeps the old value.
#include <gtest/gtest.h>

#include <cmath>

#include "test_util.h"

namespace specd::testing {
namespace {

TEST(TestMetric, NanAndInfinityFailEveryTolerance) {
  const std::vector<float> ref = {1.f, 2.f, 3.f, 4.f};
  EXPECT_EQ(MaxRowRelErr(ref, ref, 2), 0.0);
  EXPECT_TRUE(std::isinf(MaxRowRelErr({NAN, NAN, NAN, NAN}, ref, 2)));
  EXPECT_TRUE(std::isinf(MaxRowRelErr({1.f, 2.f, NAN, 4.f}, ref, 2)));
  EXPECT_TRUE(std::isinf(RelL2({1.f, INFINITY, 3.f, 4.f}, ref)));
  EXPECT_NEAR(MaxRowRelErr({1.f, 2.f, 3.f, 5.f}, ref, 2), 1.0 / 5.0, 1e-6);  // second row: |(0,1)| / |(3,4)|
}

}  // namespace
}  // namespace specd::testing
