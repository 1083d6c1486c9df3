// Dense GEMMs past the skinny kernel's row count on cuBLASLt: out[n, m] = x[n, k] · w[m, k]^T,
// bf16 inputs, fp32 accumulation, bf16 or fp32 out. Heuristic choices are cached per shape and
// per pointer alignment (cuBLASLt may pick kernels that assume 16-byte operands; slices of a
// tensor are not always aligned that far).
#pragma once

#ifdef SPECD_HAVE_CUDA

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <string>
#include <tuple>

namespace specd {

class LtGemm {
 public:
  // workspace: device memory of `bytes`, shared with other work on the same stream.
  LtGemm(void* workspace, size_t bytes);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // Returns an empty string on success, else what failed.
  std::string Run(const void* x, const void* w, void* out, bool out_f32, int64_t n, int64_t m, int64_t k,
                  cudaStream_t s);
  size_t plans() const { return plans_.size(); }

 private:
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool ok = false;
  };
  // (n, m, k, out_f32, alignment of x, w, out)
  using Key = std::tuple<int64_t, int64_t, int64_t, bool, int, int, int>;
  Plan* PlanFor(const Key& key, std::string* err);

  cublasLtHandle_t lt_ = nullptr;
  void* ws_ = nullptr;
  size_t ws_bytes_ = 0;
  std::map<Key, Plan> plans_;
};

}  // namespace specd

#endif  // SPECD_HAVE_CUDA
