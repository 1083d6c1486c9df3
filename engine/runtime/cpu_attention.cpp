// Causal GQA attention over each slot's paged KV cache (fp32 softmax), the CPU reference.
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "runtime/cpu_backend.h"

namespace specd {

void CpuBackend::StageBlockTable(const std::vector<int32_t>& table, Tensor& dst) {
  if (static_cast<int64_t>(table.size()) != dst.numel() || dst.dtype != DType::kI32) {
    throw std::invalid_argument(fmt::format("block table of {} entries into a {} {} tensor", table.size(),
                                            DTypeName(dst.dtype), dst.ShapeString()));
  }
  std::memcpy(dst.data, table.data(), table.size() * sizeof(int32_t));
}

namespace {

// Where row `pos` of `slot` lives in a [num_blocks, Hkv, B, D] pool: the offset of head 0's row
// (head h adds h * B * D). Throws where no block backs the row, as an out-of-capacity row did
// before paging: the forward reserves blocks first, so this is a caller's bug.
int64_t RowOffset(const AttnLayerState& st, int slot, int64_t pos, int hkv, int D) {
  const int64_t B = st.block_size(), mb = st.max_blocks_per_slot();
  if (slot < 0 || slot >= st.block_table.dim(0) || pos < 0 || pos / B >= mb) {
    throw std::out_of_range(fmt::format("attention: row {} of slot {} is past the slot capacity {}", pos, slot,
                                        mb * B));
  }
  const int32_t blk = st.block_table.ptr<int32_t>()[slot * mb + pos / B];
  if (blk < 0 || blk >= st.num_blocks()) {
    throw std::out_of_range(fmt::format("attention: row {} of slot {} has no KV block (entry {})", pos, slot, blk));
  }
  return (int64_t{blk} * hkv * B + pos % B) * D;
}

}  // namespace

void CpuBackend::Attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttnDims& d,
                           AttnLayerState& st, const BatchInfo& b, Tensor& out) {
  const int hq = d.num_q_heads, hkv = d.num_kv_heads, D = d.head_dim;
  const int64_t B = st.block_size();
  const int group = hq / hkv;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  for (const auto& s : b.seqs) {
    // Row offsets of every key the span reads (all of them checked before anything is written).
    std::vector<int64_t> row(static_cast<size_t>(s.n_past + s.len));
    for (int64_t j = 0; j < s.n_past + s.len; ++j) row[j] = RowOffset(st, s.slot, j, hkv, D);
    // Append this span's keys/values at positions n_past.. (for kLog spans past the slot's
    // committed length; the commit decides how many of them count).
    for (int64_t t = 0; t < s.len; ++t) {
      for (int h = 0; h < hkv; ++h) {
        const int64_t dst = row[s.n_past + t] + h * B * D;
        const int64_t src = ((s.offset + t) * hkv + h) * D;
        std::memcpy(st.k.ptr<float>() + dst, k.ptr<float>() + src, sizeof(float) * D);
        std::memcpy(st.v.ptr<float>() + dst, v.ptr<float>() + src, sizeof(float) * D);
      }
    }
#pragma omp parallel for collapse(2) if (s.len * hq * (s.n_past + s.len) * D > (1 << 20))
    for (int64_t t = 0; t < s.len; ++t) {
      for (int h = 0; h < hq; ++h) {
        const int kvh = h / group;
        const int64_t n_keys = s.n_past + t + 1;
        const float* qv = q.ptr<float>() + ((s.offset + t) * hq + h) * D;
        const float* kc = st.k.ptr<float>() + kvh * B * D;
        const float* vc = st.v.ptr<float>() + kvh * B * D;
        std::vector<float> p(static_cast<size_t>(n_keys));
        float mx = -INFINITY;
        for (int64_t j = 0; j < n_keys; ++j) {
          float acc = 0.f;
          const float* kr = kc + row[j];
          for (int i = 0; i < D; ++i) acc += qv[i] * kr[i];
          p[j] = acc * scale;
          mx = std::max(mx, p[j]);
        }
        float sum = 0.f;
        for (int64_t j = 0; j < n_keys; ++j) {
          p[j] = std::exp(p[j] - mx);
          sum += p[j];
        }
        float* o = out.ptr<float>() + ((s.offset + t) * hq + h) * D;
        std::memset(o, 0, sizeof(float) * D);
        for (int64_t j = 0; j < n_keys; ++j) {
          const float w = p[j] / sum;
          const float* vr = vc + row[j];
          for (int i = 0; i < D; ++i) o[i] += w * vr[i];
        }
      }
    }
  }
}

}  // namespace specd
