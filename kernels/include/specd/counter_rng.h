// Counter-based randomness, written once for the host and the device: every draw is a pure
// function of (seed, position, index, stream), so a seeded request's randomness does not depend
// on which other requests share its batch, on scheduling, on how many draws happened before, or
// on whether its tokens are chosen on the CPU or the GPU. Plain C++ (no CUDA headers): the
// engine includes it in builds without CUDA.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define SPECD_RNG_HD __host__ __device__
#else
#define SPECD_RNG_HD
#endif

namespace specd {

enum class RngStream : uint64_t {
  kSample = 1,    // plain sampling / the bonus token
  kAccept = 2,    // the rejection rule's accept test
  kResidual = 3,  // resampling from the residual after a rejection
  kDraft = 4,     // a draft model's own proposal
  kGumbel = 5,    // coupled mode: per-vocabulary-entry Gumbel noise
};

SPECD_RNG_HD inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

SPECD_RNG_HD inline uint64_t CounterHash(uint64_t seed, uint64_t position, uint64_t index, RngStream stream) {
  uint64_t h = SplitMix64(seed ^ 0x5EEDull);
  h = SplitMix64(h ^ position);
  h = SplitMix64(h ^ (index * 0x100000001B3ull));
  return SplitMix64(h ^ static_cast<uint64_t>(stream));
}

// Uniform in [0, 1) with 53 random bits.
SPECD_RNG_HD inline double CounterUniform(uint64_t seed, uint64_t position, uint64_t index, RngStream stream) {
  return static_cast<double>(CounterHash(seed, position, index, stream) >> 11) * 0x1.0p-53;
}

}  // namespace specd
