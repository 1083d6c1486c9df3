#include "runtime/cpu_gemm.h"

#include <algorithm>
#include <vector>

#ifdef SPECD_HAVE_CBLAS
#include <cblas.h>
#endif

namespace specd {

void CpuSgemm(const float* x, const float* w, float* y, int64_t n, int64_t m, int64_t k) {
  if (n == 0 || m == 0) return;
#ifdef SPECD_HAVE_CBLAS
  // OpenBLAS picks its kernels by the row count (below 4 rows it takes another path than at 4
  // or more), so a row's bits would depend on how many rows share the call: a draft model's
  // probabilities on how many sequences it drafts for, and with them a seeded request's tokens.
  // Every call is therefore made on blocks of exactly kRows rows (the tail padded with zeros):
  // a row's result depends on its own data only.
  constexpr int64_t kRows = 8;
  auto block = [&](const float* xb, float* yb) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(kRows), static_cast<int>(m),
                static_cast<int>(k), 1.f, xb, static_cast<int>(k), w, static_cast<int>(k), 0.f, yb,
                static_cast<int>(m));
  };
  const int64_t full = n / kRows * kRows;
  for (int64_t i = 0; i < full; i += kRows) block(x + i * k, y + i * m);
  if (full < n) {
    const int64_t rest = n - full;
    std::vector<float> xb(static_cast<size_t>(kRows * k), 0.f), yb(static_cast<size_t>(kRows * m));
    std::copy(x + full * k, x + n * k, xb.begin());
    block(xb.data(), yb.data());
    std::copy(yb.begin(), yb.begin() + rest * m, y + full * m);
  }
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
