#include "runtime/cpu_gemm.h"

#ifdef SPECD_HAVE_CBLAS
#include <cblas.h>
#endif

namespace specd {

void CpuSgemm(const float* x, const float* w, float* y, int64_t n, int64_t m, int64_t k) {
  if (n == 0 || m == 0) return;
#ifdef SPECD_HAVE_CBLAS
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(m),
              static_cast<int>(k), 1.f, x, static_cast<int>(k), w, static_cast<int>(k), 0.f, y,
              static_cast<int>(m));
#else
  // Rows of w are contiguous in k, as are rows of x: each output is one dot product. Blocks of
  // 4 x-rows reuse each w row from cache.
#pragma omp parallel for schedule(static) if (n * m * k > (1 << 20))
  for (int64_t j = 0; j < m; ++j) {
    const float* wr = w + j * k;
    for (int64_t i0 = 0; i0 < n; i0 += 4) {
      const int64_t i1 = i0 + 4 < n ? i0 + 4 : n;
      float acc[4] = {0.f, 0.f, 0.f, 0.f};
      for (int64_t t = 0; t < k; ++t) {
        const float wv = wr[t];
        for (int64_t i = i0; i < i1; ++i) acc[i - i0] += x[i * k + t] * wv;
      }
      for (int64_t i = i0; i < i1; ++i) y[i * m + j] = acc[i - i0];
    }
  }
#endif
}

}  // namespace specd
