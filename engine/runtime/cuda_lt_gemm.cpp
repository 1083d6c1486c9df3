#ifdef SPECD_HAVE_CUDA

#include "runtime/cuda_lt_gemm.h"

#include <fmt/format.h>

namespace specd {
namespace {

// The largest power of two (<= 256) that divides the address.
int AlignmentOf(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  int a = 1;
  while (a < 256 && v % (2 * a) == 0) a *= 2;
  return a;
}

}  // namespace

LtGemm::LtGemm(void* workspace, size_t bytes) : ws_(workspace), ws_bytes_(bytes) { cublasLtCreate(&lt_); }

LtGemm::~LtGemm() {
  for (auto& [key, p] : plans_) {
    if (p.op) cublasLtMatmulDescDestroy(p.op);
    if (p.a) cublasLtMatrixLayoutDestroy(p.a);
    if (p.b) cublasLtMatrixLayoutDestroy(p.b);
    if (p.c) cublasLtMatrixLayoutDestroy(p.c);
  }
  if (lt_) cublasLtDestroy(lt_);
}

LtGemm::Plan* LtGemm::PlanFor(const Key& key, std::string* err) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return &it->second;
  const auto [n, m, k, out_f32, ax, aw, ao] = key;
  Plan& p = plans_[key];
  // Column-major view of the row-major product: out^T [m, n] = w [k, m]^T · x [k, n].
  cublasStatus_t st = cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
  if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
  if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, k, m, k);
  if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, k, n, k);
  if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatrixLayoutCreate(&p.c, out_f32 ? CUDA_R_32F : CUDA_R_16BF, m, n, m);
  cublasLtMatmulPreference_t pref = nullptr;
  if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulPreferenceCreate(&pref);
  const uint64_t ws = ws_bytes_;
  const uint32_t al_w = static_cast<uint32_t>(aw), al_x = static_cast<uint32_t>(ax), al_o = static_cast<uint32_t>(ao);
  if (st == CUBLAS_STATUS_SUCCESS) {
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_w, sizeof al_w);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_x, sizeof al_x);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_o, sizeof al_o);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_o, sizeof al_o);
    cublasLtMatmulHeuristicResult_t h{};
    int found = 0;
    st = cublasLtMatmulAlgoGetHeuristic(lt_, p.op, p.a, p.b, p.c, p.c, pref, 1, &h, &found);
    if (st == CUBLAS_STATUS_SUCCESS && found > 0) {
      p.algo = h.algo;
      p.ok = true;
    }
  }
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  if (!p.ok) {
    *err = fmt::format("cuBLASLt has no algorithm for [{}x{}] x [{}x{}]^T (status {})", n, k, m, k, static_cast<int>(st));
    return nullptr;
  }
  return &p;
}

std::string LtGemm::Run(const void* x, const void* w, void* out, bool out_f32, int64_t n, int64_t m, int64_t k,
                        cudaStream_t s) {
  std::string err;
  Plan* p = PlanFor(Key{n, m, k, out_f32, AlignmentOf(x), AlignmentOf(w), AlignmentOf(out)}, &err);
  if (p == nullptr) return err;
  const float alpha = 1.f, beta = 0.f;
  const cublasStatus_t st =
      cublasLtMatmul(lt_, p->op, &alpha, w, p->a, x, p->b, &beta, out, p->c, out, p->c, &p->algo, ws_, ws_bytes_, s);
  return st == CUBLAS_STATUS_SUCCESS ? std::string() : fmt::format("cublasLtMatmul: status {}", static_cast<int>(st));
}

}  // namespace specd

#endif  // SPECD_HAVE_CUDA
