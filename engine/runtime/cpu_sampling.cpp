// The CPU token-choice ops call the host path's own functions, so the "device path" on this
// backend is the host rule by construction and the CUDA kernels are tested against it.
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "runtime/cpu_backend.h"
#include "speculative/sampling.h"

namespace specd {

void CpuBackend::ArgmaxRows(const Tensor& logits, Tensor& ids) {
  if (logits.dtype != DType::kF32 || logits.rank() != 2 || ids.dtype != DType::kI32 || ids.numel() != logits.dim(0)) {
    throw std::invalid_argument("ArgmaxRows: logits must be F32 [R, V] and ids I32 [R]");
  }
  const int64_t R = logits.dim(0), V = logits.dim(1);
  if (V <= 0 && R > 0) throw std::invalid_argument("ArgmaxRows: empty rows");
  for (int64_t r = 0; r < R; ++r) ids.ptr<int32_t>()[r] = ArgmaxF(logits.ptr<float>() + r * V, V);
}

void CpuBackend::MaskIds(Tensor& logits, const Tensor& ban) {
  if (logits.dtype != DType::kF32 || logits.rank() != 2 || ban.dtype != DType::kI32 || ban.rank() != 2 ||
      ban.dim(0) != logits.dim(0)) {
    throw std::invalid_argument("MaskIds: logits must be F32 [R, V] and ban I32 [R, M]");
  }
  const int64_t R = logits.dim(0), V = logits.dim(1), M = ban.dim(1);
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t j = 0; j < M; ++j) {
      const int32_t id = ban.ptr<int32_t>()[r * M + j];
      if (id >= 0 && id < V) logits.ptr<float>()[r * V + id] = -INFINITY;
    }
  }
}

std::vector<int32_t> CpuBackend::DownloadI32(const Tensor& t) {
  if (t.dtype != DType::kI32) throw std::invalid_argument("DownloadI32 of a non-I32 tensor");
  std::vector<int32_t> out(static_cast<size_t>(t.numel()));
  if (!out.empty()) std::memcpy(out.data(), t.data, t.nbytes());
  return out;
}

void CpuBackend::ChooseTokens(Tensor& logits, const std::vector<TokenRowSpec>& rows, const Tensor& q, Tensor& out) {
  if (logits.dtype != DType::kF32 || logits.rank() != 2 || static_cast<int64_t>(rows.size()) != logits.dim(0) ||
      out.dtype != DType::kI32 || out.numel() != 2 * logits.dim(0)) {
    throw std::invalid_argument("ChooseTokens: logits must be F32 [R, V], rows R entries and out I32 [R, 2]");
  }
  const int64_t V = logits.dim(1);
  const int64_t Q = q.defined() ? q.dim(0) : 0;
  if (q.defined() && (q.dtype != DType::kF32 || q.rank() != 2 || q.dim(1) != V)) {
    throw std::invalid_argument("ChooseTokens: q must be F32 [Q, V]");
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    const TokenRowSpec& s = rows[r];
    if (s.q_row >= Q || s.draft >= V) throw std::invalid_argument("ChooseTokens: q_row or draft out of range");
    const float* qr = s.q_row >= 0 ? q.ptr<float>() + s.q_row * V : nullptr;
    const TokenChoice c = ChooseRow(logits.ptr<float>() + static_cast<int64_t>(r) * V, V, s, qr);
    out.ptr<int32_t>()[2 * r] = c.token;
    out.ptr<int32_t>()[2 * r + 1] = c.accept;
  }
}

}  // namespace specd
