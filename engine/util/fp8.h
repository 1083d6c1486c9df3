// The FP8 e4m3 ("e4m3fn": no infinities, one NaN pattern per sign, largest finite 448) codec
// that block-wise FP8 checkpoints store weights in. Rounding and overflow follow torch's
// .to(torch.float8_e4m3fn), which is what wrote those checkpoints (tests/unit/fp8_test.cpp checks
// every case against torch's own casts).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace specd {

inline constexpr float kFp8E4M3Max = 448.f;

inline bool Fp8E4M3IsNan(uint8_t b) { return (b & 0x7f) == 0x7f; }

inline float Fp8E4M3ToF32(uint8_t b) {
  const int e = (b >> 3) & 0xf, m = b & 7;
  float v;
  if (e == 0) {
    v = std::ldexp(static_cast<float>(m), -9);  // subnormal: m * 2^-9
  } else if (e == 15 && m == 7) {
    v = NAN;
  } else {
    v = std::ldexp(1.f + static_cast<float>(m) / 8.f, e - 7);
  }
  return (b & 0x80) ? -v : v;
}

// Round to nearest even, as torch's CPU cast: finite values past the largest (and infinities)
// saturate to +-448, NaN stays NaN with its sign. Callers that quantize clamp to +-448 first.
inline uint8_t F32ToFp8E4M3(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return static_cast<uint8_t>(sign | 0x7f);  // NaN
  uint32_t code;
  if (u < (121u << 23)) {  // below 2^-6: a multiple of 2^-9 (code 8 is the smallest normal)
    float a;
    std::memcpy(&a, &u, 4);
    code = static_cast<uint32_t>(std::nearbyint(a * 512.f));
  } else {
    // Keep 3 mantissa bits, round to nearest even; a carry moves into the exponent.
    const uint32_t r = (u + 0x7ffffu + ((u >> 20) & 1u)) >> 20;
    code = u >= 0x43e00000u ? 0x7eu : r - (120u << 3);  // from 448 up: saturate; else re-bias 127 -> 7
  }
  return static_cast<uint8_t>(sign | code);
}

}  // namespace specd
