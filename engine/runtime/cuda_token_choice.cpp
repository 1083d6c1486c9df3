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

void CudaBackend::ArgmaxRows(const Tensor& logits, Tensor& ids) {
  Prof prof_(this, "argmax rows");
  if (logits.dtype != DType::kF32 || logits.rank() != 2 || ids.dtype != DType::kI32 || ids.numel() != logits.dim(0)) {
    Fail(fmt::format("ArgmaxRows: logits {} must be F32 [R, V] and ids {} I32 [R]", logits.ShapeString(),
                     ids.ShapeString()));
    return;
  }
  const int64_t R = logits.dim(0), V = logits.dim(1);
  if (R == 0) return;
  Tensor scratch = Empty(DType::kI64, {R * std::max(K::ArgmaxSplits(R, V), 1)});
  Check(K::ArgmaxRows(logits.ptr<float>(), R, V, static_cast<uint64_t*>(scratch.data), ids.ptr<int32_t>(), stream_),
        "argmax rows");
}

void CudaBackend::MaskIds(Tensor& logits, const Tensor& ban) {
  Prof prof_(this, "mask ids");
  if (logits.dtype != DType::kF32 || logits.rank() != 2 || ban.dtype != DType::kI32 || ban.rank() != 2 ||
      ban.dim(0) != logits.dim(0)) {
    Fail(fmt::format("MaskIds: logits {} must be F32 [R, V] and ban {} I32 [R, M]", logits.ShapeString(),
                     ban.ShapeString()));
    return;
  }
  Check(K::MaskIds(logits.ptr<float>(), logits.dim(0), logits.dim(1), ban.ptr<int32_t>(), ban.dim(1), stream_),
        "mask ids");
}

std::vector<int32_t> CudaBackend::DownloadI32(const Tensor& t) {
  if (t.dtype != DType::kI32) throw std::invalid_argument("DownloadI32 of a non-I32 tensor");
  std::vector<int32_t> out(static_cast<size_t>(t.numel()));
  if (out.empty()) return out;
  Check(cudaMemcpyAsync(out.data(), t.data, t.nbytes(), cudaMemcpyDeviceToHost, stream_), "download i32");
  Check(cudaStreamSynchronize(stream_), "download i32 sync");
  return out;
}

void CudaBackend::ChooseTokens(Tensor& logits, const std::vector<TokenRowSpec>& rows, const Tensor& q, Tensor& out) {
  Prof prof_(this, "choose tokens");
  const bool q_ok = !q.defined() ||
                    (q.dtype == DType::kF32 && q.rank() == 2 && logits.rank() == 2 && q.dim(1) == logits.dim(1));
  if (logits.dtype != DType::kF32 || logits.rank() != 2 || static_cast<int64_t>(rows.size()) != logits.dim(0) ||
      out.dtype != DType::kI32 || out.numel() != 2 * logits.dim(0) || !q_ok) {
    Fail(fmt::format("ChooseTokens: logits {} must be F32 [R, V] with R = {} rows, out {} I32 [R, 2], q {} F32 [Q, V]",
                     logits.ShapeString(), rows.size(), out.ShapeString(), q.ShapeString()));
    return;
  }
  const int64_t R = logits.dim(0), V = logits.dim(1);
  if (R == 0) return;
  static_assert(sizeof(K::TokenRow) % sizeof(int32_t) == 0);
  std::vector<K::TokenRow> kr(rows.size());
  for (size_t r = 0; r < rows.size(); ++r) {
    const TokenRowSpec& t = rows[r];
    kr[r] = K::TokenRow{t.temperature,     t.top_k, t.top_p, t.min_p,  t.seed,  t.position,
                        t.coupled ? 1 : 0, t.draft, t.index, t.stream, t.q_row, 0};
  }
  // No Upload (it waits for the device): the forward before this may still be running.
  const int64_t words = R * static_cast<int64_t>(sizeof(K::TokenRow) / sizeof(int32_t));
  Tensor dev_rows = Empty(DType::kI32, {words});
  Check(rows_stager_.Copy(kr.data(), kr.size() * sizeof(K::TokenRow), dev_rows.data, stream_), "token rows");
  const int64_t bytes = static_cast<int64_t>(K::ChooseTokensScratchBytes(R, V));
  Tensor scratch = Empty(DType::kI32, {(bytes + 3) / 4});
  Check(K::ChooseTokens(logits.ptr<float>(), R, V, static_cast<const K::TokenRow*>(dev_rows.data), kr.data(),
                        q.defined() ? q.ptr<float>() : nullptr, q.defined() ? q.dim(0) : 0, scratch.data,
                        out.ptr<int32_t>(), stream_),
        "choose tokens");
}

}  // namespace specd::cuda_detail

#endif  // SPECD_HAVE_CUDA
