// The one id-list parser of `specd` and `specd-client` (util/id_list.h).
#include <gtest/gtest.h>

#include "util/id_list.h"

namespace specd {
namespace {

TEST(IdList, CommasSpacesAndBothSeparate) {
  std::string err;
  EXPECT_EQ(ParseIdList("1,2,3", &err), (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(ParseIdList(" 4 5  6 ", &err), (std::vector<int32_t>{4, 5, 6}));
  EXPECT_EQ(ParseIdList("7, 8,,9", &err), (std::vector<int32_t>{7, 8, 9}));
  EXPECT_EQ(ParseIdList("0,2147483647", &err), (std::vector<int32_t>{0, 2147483647}));
}

TEST(IdList, RejectsEmptyNegativeOverflowAndJunkNamingTheEntry) {
  for (const char* bad : {"", " , ", "-1", "1,-5", "2147483648", "1,x,3", "1.5", "3a", "+4"}) {
    std::string err;
    EXPECT_FALSE(ParseIdList(bad, &err).has_value()) << bad;
    EXPECT_FALSE(err.empty()) << bad;
  }
  std::string err;
  ASSERT_FALSE(ParseIdList("1,x7,3", &err));
  EXPECT_NE(err.find("'x7'"), std::string::npos) << err;
}

}  // namespace
}  // namespace specd
