// Encode from many threads at once (the server's use): results equal the references while the
// shared BPE cache is being filled and flushed.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>

#include "fixtures.h"

namespace specd {
namespace {

TEST(Concurrency, ParallelEncodeMatchesReference) {
  const auto cases = testing::ReadJson(testing::Qwen3Dir() + "/tok_ref_public.json")["cases"];
  std::atomic<int> mismatches{0}, done{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int iter = 0; iter < 400; ++iter) {
        if (t % 2 == 1) {
          // Odd threads push many distinct words through the cache so that shards overflow
          // and get cleared under the other threads' feet.
          std::string junk;
          for (int w = 0; w < 50; ++w) junk += " q" + std::to_string(rng()) + "zx";
          if (!testing::Qwen3().Encode(junk).ok()) ++mismatches;
        }
        const auto& c = cases[rng() % cases.size()];
        auto ids = testing::Qwen3().Encode(c["text"].get<std::string>());
        if (!ids.ok() || *ids != c["ids"].get<std::vector<int32_t>>()) ++mismatches;
        ++done;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(done.load(), 8 * 400);
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace specd
