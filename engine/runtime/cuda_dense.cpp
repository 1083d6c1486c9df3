#ifdef SPECD_HAVE_CUDA

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/cuda_backend.h"

namespace specd::cuda_detail {

void CudaBackend::Embedding(const Tensor& table, const Tensor& ids, Tensor& out) {
  Prof prof_(this, "embedding");
  Check(K::EmbeddingGather(B(table), table.dim(0), table.dim(1), ids.ptr<int32_t>(), ids.numel(), out.data,
                           out.dtype == DType::kF32, stream_),
        "embedding");
}

void CudaBackend::Gemm(const Tensor& x, const Tensor& w, Tensor& out) {
  Prof prof_(this, fmt::format("gemm {}x{}", w.dim(0), w.dim(1)));
  const int64_t k = x.dim(-1), n = x.numel() / k, m = w.dim(0);
  if (w.dim(1) != k || out.numel() != n * m) {
    Fail(fmt::format("Gemm shape mismatch: x {} w {} out {}", x.ShapeString(), w.ShapeString(), out.ShapeString()));
    return;
  }
  if (n == 0) return;
  if (K::SkinnyGemmApplies(n, k, x.data, w.data)) {
    Check(K::SkinnyGemm(B(x), B(w), out.data, out.dtype == DType::kF32, n, m, k, stream_), "skinny gemm");
    return;
  }
  const std::string err = lt_->Run(x.data, w.data, out.data, out.dtype == DType::kF32, n, m, k, stream_);
  if (!err.empty()) Fail(err);
}

void CudaBackend::RmsNorm(const Tensor& x, const Tensor& w, float eps, bool unit_offset, Tensor& out) {
  Prof prof_(this, "rmsnorm");
  const int64_t d = w.numel();
  Check(K::RmsNorm(x.data, x.dtype == DType::kF32, B(w), x.numel() / d, static_cast<int>(d), eps, unit_offset, B(out),
                   stream_),
        "rmsnorm");
}

void CudaBackend::Add(const Tensor& a, const Tensor& b, Tensor& out) {
  Prof prof_(this, "add");
  if (out.dtype == DType::kF32) {
    if (a.data != out.data || a.dtype != DType::kF32 || b.dtype != DType::kBF16) {
      Fail("Add: the fp32 form is residual += bf16 (out must alias a)");
      return;
    }
    Check(K::AddToResidual(out.ptr<float>(), B(b), a.numel(), stream_), "residual add");
    return;
  }
  Check(K::Add(B(a), B(b), B(out), a.numel(), stream_), "add");
}

void CudaBackend::AddRmsNorm(Tensor& h, const Tensor& mix, const Tensor& w, float eps, bool unit_offset, Tensor& out) {
  Prof prof_(this, "add + rmsnorm");
  const int64_t d = w.numel();
  if (h.dtype != DType::kF32 || mix.dtype != DType::kBF16 || h.numel() != mix.numel() || h.numel() != out.numel()) {
    Fail("AddRmsNorm: expects the fp32 residual, a bf16 branch output and a bf16 output of one shape");
    return;
  }
  Check(K::AddRmsNorm(h.ptr<float>(), B(mix), B(w), h.numel() / d, static_cast<int>(d), eps, unit_offset, B(out),
                      stream_),
        "add_rmsnorm");
}

void CudaBackend::GemmMulti(const Tensor& x, const Tensor& w, const std::vector<Tensor*>& outs) {
  const int64_t k = x.dim(-1), n = x.numel() / k;
  int64_t rows = 0;
  K::SkinnyStack st;
  bool stackable = outs.size() <= static_cast<size_t>(K::kSkinnyMaxStack) && K::SkinnyGemmApplies(n, k, x.data, w.data);
  for (Tensor* o : outs) {
    rows += o->dim(-1);
    if (o->numel() != n * o->dim(-1) || o->dtype != DType::kBF16) stackable = false;
    if (st.count < K::kSkinnyMaxStack) {
      st.end[st.count] = rows;
      st.out[st.count++] = o->data;
    }
  }
  if (rows != w.dim(0) || w.dim(1) != k) {
    Fail(fmt::format("GemmMulti: outputs of {} rows in all, weights {}", rows, w.ShapeString()));
    return;
  }
  if (!stackable) {
    Backend::GemmMulti(x, w, outs);
    return;
  }
  Prof prof_(this, fmt::format("gemm stacked {}x{}", w.dim(0), w.dim(1)));
  Check(K::SkinnyGemmStacked(B(x), B(w), st, n, k, stream_), "skinny gemm stacked");
}

void CudaBackend::GemmSwiGlu(const Tensor& x, const Tensor& w, Tensor& out) {
  const int64_t k = x.dim(-1), n = x.numel() / k, I = w.dim(0) / 2;
  if (w.dim(1) != k || w.dim(0) != 2 * I || out.numel() != n * I) {
    Fail(fmt::format("GemmSwiGlu shape mismatch: x {} w {} out {}", x.ShapeString(), w.ShapeString(),
                     out.ShapeString()));
    return;
  }
  if (n == 0) return;
  if (K::SkinnyGemmApplies(n, k, x.data, w.data)) {
    Prof prof_(this, fmt::format("gemm+swiglu {}x{}", w.dim(0), w.dim(1)));
    Check(K::SkinnyGemmSwiGlu(B(x), B(w), B(out), n, I, k, stream_), "skinny gemm swiglu");
    return;
  }
  // Verify and prefill: one cuBLAS GEMM over both halves, then the SwiGLU over its columns.
  Tensor gu = Empty(DType::kBF16, {n, 2 * I});
  Gemm(x, w, gu);
  Prof prof_(this, "swiglu");
  Check(K::SwiGluPacked(B(gu), n, I, B(out), stream_), "swiglu packed");
}

void CudaBackend::SwiGlu(const Tensor& gate, const Tensor& up, Tensor& out) {
  Prof prof_(this, "swiglu");
  Check(K::SwiGlu(B(gate), B(up), B(out), gate.numel(), stream_), "swiglu");
}

void CudaBackend::SigmoidMul(const Tensor& x, const Tensor& gate, Tensor& out) {
  Prof prof_(this, "sigmoid_mul");
  Check(K::SigmoidMul(B(x), B(gate), B(out), x.numel(), stream_), "sigmoid_mul");
}

void CudaBackend::GatherRows(const Tensor& x, const Tensor& rows, Tensor& out) {
  Prof prof_(this, "gather_rows");
  Check(K::GatherRows(x.data, rows.ptr<int64_t>(), rows.numel(), x.numel() / x.dim(0),
                      static_cast<int>(DTypeSize(x.dtype)), out.data, stream_),
        "gather");
}

}  // namespace specd::cuda_detail

#endif  // SPECD_HAVE_CUDA
