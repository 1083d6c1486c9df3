// Small helpers every benchmark program uses.
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

namespace specd::bench {

// Seconds on a steady clock.
inline double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

}  // namespace specd::bench
