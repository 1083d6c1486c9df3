// StopStringMatcher on its own: hand-checked results and independence from chunking.
#include <gtest/gtest.h>

#include <random>

#include "tokenizer/stop_strings.h"

namespace specd {
namespace {

struct Result {
  std::string text;
  std::optional<size_t> index;
  bool operator==(const Result&) const = default;
};

Result RunChunked(const std::vector<std::string>& stops, std::string_view text,
                  const std::vector<size_t>& cuts) {
  StopStringMatcher m(stops);
  Result r;
  size_t prev = 0;
  for (size_t cut : cuts) {
    r.text += m.Push(text.substr(prev, cut - prev));
    prev = cut;
  }
  r.text += m.Push(text.substr(prev));
  r.text += m.Flush();
  r.index = m.matched_index();
  return r;
}

Result RunWhole(const std::vector<std::string>& stops, std::string_view text) {
  return RunChunked(stops, text, {});
}

TEST(StopStrings, NoStopsPassesEverythingThrough) {
  StopStringMatcher m;
  EXPECT_EQ(m.Push("abc"), "abc");
  EXPECT_EQ(m.Flush(), "");
  EXPECT_FALSE(m.stopped());
}

TEST(StopStrings, HandCheckedCases) {
  EXPECT_EQ(RunWhole({"END"}, "abcENDxyz"), (Result{"abc", 0}));
  EXPECT_EQ(RunWhole({"END"}, "abcEN"), (Result{"abcEN", std::nullopt}));
  // The first stop string to be completed wins: "b" ends before "xbc" does.
  EXPECT_EQ(RunWhole({"xbc", "b"}, "axbcd"), (Result{"ax", 1}));
  // Same end: the earlier start (longer string) wins.
  EXPECT_EQ(RunWhole({"c", "bc"}, "abcd"), (Result{"a", 1}));
  EXPECT_EQ(RunWhole({"", "zz"}, "azzb"), (Result{"a", 1}));  // empty stop strings are ignored
}

TEST(StopStrings, HoldsBackOnlyAPossiblePrefix) {
  StopStringMatcher m({"<|stop|>"});
  EXPECT_EQ(m.Push("text <|st"), "text ");
  EXPECT_EQ(m.held_bytes(), 4u);
  EXPECT_EQ(m.Push("art"), "<|start");  // "<|sta" cannot become "<|stop|>"
  EXPECT_EQ(m.held_bytes(), 0u);
  EXPECT_EQ(m.Push(" <"), " ");
  EXPECT_EQ(m.Push("|stop|> after"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.Push("more"), "");
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopStrings, ResultDoesNotDependOnChunking) {
  const std::vector<std::vector<std::string>> stop_sets = {
      {"abab"}, {"aab", "ba"}, {"bbb"}, {"ab", "b", "abba"}, {"zzz"}, {"a"}};
  std::mt19937 rng(7);
  for (int iter = 0; iter < 300; ++iter) {
    std::string text;
    const int len = 1 + static_cast<int>(rng() % 16);
    for (int i = 0; i < len; ++i) text += "ab"[rng() % 2];
    for (const auto& stops : stop_sets) {
      const Result whole = RunWhole(stops, text);
      // Every split into single bytes, and a few random splits.
      std::vector<size_t> every;
      for (size_t i = 1; i < text.size(); ++i) every.push_back(i);
      EXPECT_EQ(RunChunked(stops, text, every), whole) << text;
      std::vector<size_t> some;
      for (size_t i = 1; i < text.size(); ++i) {
        if (rng() % 3 == 0) some.push_back(i);
      }
      EXPECT_EQ(RunChunked(stops, text, some), whole) << text;
      // Stopped output is the text before the match; unstopped output is all of it.
      if (whole.index) {
        EXPECT_TRUE(text.starts_with(whole.text));
        const std::string& stop = stops[*whole.index];
        EXPECT_EQ(text.compare(whole.text.size(), stop.size(), stop), 0) << text;
        // ... and no stop string was completed earlier than this one.
        for (const auto& other : stops) {
          const size_t p = text.find(other);
          if (p != std::string::npos) {
            EXPECT_GE(p + other.size(), whole.text.size() + stop.size()) << text;
          }
        }
      } else {
        EXPECT_EQ(whole.text, text);
      }
    }
  }
}

}  // namespace
}  // namespace specd
