// Shared by the GPU tests: a CUDA backend or a visible skip, and CPU/GPU comparisons.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "runtime/backend.h"
#include "runtime/cpu_backend.h"
#include "test_util.h"

namespace specd::testing {

// bf16 activations against the fp32 reference (docs/DESIGN-NOTES.md, numerics).
constexpr double kBf16Tol = 2e-2;

// The CUDA backend, or nullptr with the reason in *why.
inline Backend* Gpu(std::string* why = nullptr) {
  static std::string error;
  static std::unique_ptr<Backend> be = [] {
    // Tests count replays: a shape is captured the first time it runs (the daemon waits for the
    // second sighting; gpu_graph_memory_test.cpp tests that policy).
    BackendOptions o;
    o.graph_capture_after = 1;
    auto b = MakeBackend("cuda", o);
    if (!b.ok()) error = b.status().ToString();
    return b.ok() ? std::move(b).value() : nullptr;
  }();
  if (why != nullptr) *why = error;
  return be.get();
}

// Skips only where no CUDA device is visible; a device that is present but whose backend fails
// to start is a failure, not a skip.
#define SPECD_REQUIRE_GPU()                                                                  \
  do {                                                                                       \
    if (::specd::CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device: this GPU test did not run"; \
    std::string why_;                                                                        \
    if (Gpu(&why_) == nullptr) FAIL() << "a CUDA device is present but the backend failed: " << why_; \
  } while (0)

// A CUDA kernel option on for a scope (off again even when an assertion leaves the test early).
struct KernelOptionOn {
  explicit KernelOptionOn(bool BackendOptions::*option) : option_(option) {
    ChangeOptions(*Gpu(), [&](BackendOptions& o) { o.*option_ = true; });
  }
  ~KernelOptionOn() {
    ChangeOptions(*Gpu(), [&](BackendOptions& o) { o.*option_ = false; });
  }
  bool BackendOptions::*option_;
};

// The same host values on both backends (the GPU copy rounded to its dtype).
struct Pair {
  Tensor cpu, gpu;
};
inline Pair MakePair(Backend& cpu, const std::vector<float>& v, std::vector<int64_t> shape,
                     DType gpu_dtype = DType::kBF16) {
  return {cpu.Upload(v.data(), DType::kF32, shape, DType::kF32), Gpu()->Upload(v.data(), DType::kF32, shape, gpu_dtype)};
}
// The GPU rounds inputs to bf16; give the CPU the same rounded values so only the op differs.
inline std::vector<float> RoundBf16(std::vector<float> v) {
  for (auto& x : v) x = Bf16ToF32(F32ToBf16(x));
  return v;
}

}  // namespace specd::testing
