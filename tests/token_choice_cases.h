// Logits rows that exercise every rule of the host argmax (speculative/sampling.cpp ArgmaxF), shared
// by the CPU unit tests and the GPU tests of the token-choice ops.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "test_util.h"

namespace specd::testing {

// The argmax rule spelled out independently of ArgmaxF: the lowest id of the maximum over the
// non-NaN entries; a NaN at id 0 gives 0 (ArgmaxF's strict `>` against NaN is always false).
inline int32_t ExpectedArgmax(const float* x, int64_t V) {
  if (std::isnan(x[0])) return 0;
  int64_t best = 0;
  for (int64_t i = 1; i < V; ++i) {
    if (!std::isnan(x[i]) && x[i] > x[best]) best = i;
  }
  return static_cast<int32_t>(best);
}

inline float Denormal(uint32_t mantissa) {
  float f;
  std::memcpy(&f, &mantissa, sizeof f);
  return f;
}

// R rows of V random logits; row r % 12 picks a hard case (ties across split boundaries, -inf
// rows, NaNs, -0/+0, denormal maxima, maxima at the ends). Every row is non-zero.
inline std::vector<float> HardLogits(int64_t R, int64_t V, uint64_t seed) {
  std::vector<float> x = RandomVec(static_cast<size_t>(R * V), seed, 8.f);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t r = 0; r < R; ++r) {
    float* row = x.data() + r * V;
    auto at = [&](int64_t i) -> float& { return row[((i % V) + V) % V]; };
    switch (r % 12) {
      case 0: break;  // plain random
      case 1:         // a tie of the maximum at three ids far apart: the lowest must win
        at(V - 1) = at(V / 2) = at(V / 3 + 1) = 100.f;
        break;
      case 2:  // every entry -inf: id 0
        for (int64_t i = 0; i < V; ++i) row[i] = -inf;
        break;
      case 3:  // NaN at id 0: ArgmaxF returns 0 whatever follows
        at(0) = nan;
        at(V / 2) = 1000.f;
        break;
      case 4:  // NaNs elsewhere never win
        for (int64_t i = 1; i < V; i += 7) row[i] = nan;
        at(V - 2) = 50.f;
        break;
      case 5:  // maximum at the last id
        at(V - 1) = 99.f;
        break;
      case 6:  // maximum at id 0, tied later
        at(0) = 99.f;
        at(V - 1) = 99.f;
        break;
      case 7:  // -0 before +0 as the maximum: equal under `>`, so the -0 (lower id) wins
        for (int64_t i = 0; i < V; ++i) row[i] = -std::fabs(row[i]) - 1.f;
        at(V / 4 + 3) = -0.f;
        at(V / 2 + 1) = 0.f;
        break;
      case 8:  // distinct denormal maxima: a flush-to-zero compare would call them equal
        for (int64_t i = 0; i < V; ++i) row[i] = -std::fabs(row[i]) - 1.f;
        at(V / 3) = Denormal(5);
        at(V - 3) = Denormal(9);
        break;
      case 9:  // +inf wins over everything, the first of two
        at(V / 5 + 2) = inf;
        at(V - 1) = inf;
        break;
      case 10:  // mostly -inf with a few finite values (a masked row)
        for (int64_t i = 0; i < V; ++i) row[i] = i % 1000 == 17 ? row[i] : -inf;
        break;
      default:  // equal values everywhere: id 0
        for (int64_t i = 0; i < V; ++i) row[i] = 3.f;
        break;
    }
  }
  return x;
}

}  // namespace specd::testing
