// The ceiling the GPU benchmarks divide by: device-to-device copy bandwidth.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench_util.h"

namespace specd::bench {

inline void CheckCuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
  std::exit(1);
}

// Bytes read + bytes written per second of a 2 GiB cudaMemcpy device to device, median of 10.
inline double CopyBandwidth() {
  const size_t bytes = size_t{2} << 30;
  void *a = nullptr, *b = nullptr;
  CheckCuda(cudaMalloc(&a, bytes), "cudaMalloc");
  CheckCuda(cudaMalloc(&b, bytes), "cudaMalloc");
  CheckCuda(cudaMemset(a, 1, bytes), "cudaMemset");
  cudaEvent_t e0, e1;
  CheckCuda(cudaEventCreate(&e0), "cudaEventCreate");
  CheckCuda(cudaEventCreate(&e1), "cudaEventCreate");
  for (int i = 0; i < 3; ++i) CheckCuda(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy");
  std::vector<double> t;
  for (int i = 0; i < 10; ++i) {
    CheckCuda(cudaEventRecord(e0), "cudaEventRecord");
    CheckCuda(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpyAsync");
    CheckCuda(cudaEventRecord(e1), "cudaEventRecord");
    CheckCuda(cudaEventSynchronize(e1), "cudaEventSynchronize");
    float ms = 0;
    CheckCuda(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime");
    t.push_back(ms / 1e3);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  CheckCuda(cudaFree(a), "cudaFree");
  CheckCuda(cudaFree(b), "cudaFree");
  return 2.0 * static_cast<double>(bytes) / Median(t);
}

}  // namespace specd::bench
