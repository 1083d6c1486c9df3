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

void CudaBackend::SplitQueryGate(const Tensor& q2, int num_heads, int head_dim, Tensor& q, Tensor& gate) {
  Prof prof_(this, "split_q_gate");
  Check(K::SplitQueryGate(B(q2), q2.dim(0), num_heads, head_dim, B(q), B(gate), stream_), "split_q_gate");
}

void CudaBackend::QkNormRope(const Tensor& q2, Tensor& k, const Tensor& q_norm, const Tensor& k_norm, float eps,
                             const AttnDims& d, const BatchInfo& b, Tensor& q, Tensor& gate) {
  Prof prof_(this, "q/k norm + rope");
  const Meta& m = UploadMeta(b);
  Check(K::QkNormRope(B(q2), B(k), B(q_norm), B(k_norm), m.tok_pos, b.num_tokens, d.num_q_heads, d.num_kv_heads,
                      d.head_dim, d.rotary_dim, d.rope_theta, eps, B(q), B(gate), stream_),
        "qk_norm_rope");
}

void CudaBackend::Rope(Tensor& x, int num_heads, const AttnDims& d, const BatchInfo& b) {
  Prof prof_(this, "rope");
  const Meta& m = UploadMeta(b);
  Check(K::Rope(B(x), m.tok_pos, b.num_tokens, num_heads, d.head_dim, d.rotary_dim, d.rope_theta, stream_), "rope");
}

void CudaBackend::StageBlockTable(const std::vector<int32_t>& table, Tensor& dst) {
  const size_t bytes = table.size() * sizeof(int32_t);
  if (dst.dtype != DType::kI32 || static_cast<int64_t>(table.size()) != dst.numel()) {
    Fail(fmt::format("StageBlockTable: {} entries into a {} {} tensor", table.size(), DTypeName(dst.dtype),
                     dst.ShapeString()));
    return;
  }
  Check(table_stager_.Copy(table.data(), bytes, dst.data, stream_), "block table");
}

void CudaBackend::Attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttnDims& d, AttnLayerState& st,
                            const BatchInfo& b, Tensor& out) {
  Prof prof_(this, "attention (append + attend)");
  const Meta& m = UploadMeta(b);
  K::PagedKv kv;
  kv.k = B(st.k);
  kv.v = B(st.v);
  kv.table = st.block_table.ptr<int32_t>();
  kv.num_blocks = st.num_blocks();
  kv.num_slots = static_cast<int>(st.block_table.dim(0));
  kv.max_blocks = static_cast<int>(st.max_blocks_per_slot());
  kv.block_size = static_cast<int>(st.block_size());
  Check(K::KvAppend(B(k), B(v), m.tok_slot, m.tok_pos, b.num_tokens, d.num_kv_heads, d.head_dim, kv, stream_),
        "kv_append");
  // Splits depend only on shapes (not on positions or the table), so a captured graph stays valid.
  const int64_t ctx = st.max_blocks_per_slot() * st.block_size();
  const int splits = K::AttentionSplits(b.num_tokens, d.num_q_heads, ctx);
  Tensor part = Empty(DType::kF32, {b.num_tokens * d.num_q_heads * splits * (d.head_dim + 2)});
  Check(K::Attention(B(q), kv, m.tok_slot, m.tok_pos, b.num_tokens, d.num_q_heads, d.num_kv_heads, d.head_dim,
                     1.f / std::sqrt(static_cast<float>(d.head_dim)), part.ptr<float>(), splits, B(out), stream_),
        "attention");
}

}  // namespace specd::cuda_detail

#endif  // SPECD_HAVE_CUDA
