// y[n, m] = x[n, k] · w[m, k]^T in fp32: OpenBLAS when the build has it, else a tiled OpenMP
// loop (the GPU machine has no cblas.h; there the CPU backend is only the tests' reference).
// Row-invariant on both paths: row i's bits do not depend on n (the batch composition).
#pragma once

#include <cstdint>

namespace specd {

void CpuSgemm(const float* x, const float* w, float* y, int64_t n, int64_t m, int64_t k);

}  // namespace specd
