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

StagingLayout StagingLayout::For(int64_t cap_tokens, int64_t cap_seqs) {
  StagingLayout l;
  const size_t t = static_cast<size_t>(cap_tokens), s = static_cast<size_t>(cap_seqs);
  l.rows = 0;                               // I64 first: 8-byte aligned
  l.seqs = l.rows + t * 8;                  // SeqMeta: 4-byte fields
  l.tok = l.seqs + s * sizeof(K::SeqMeta);  // I32 slot | pos | seq, cap_tokens each
  l.ids = l.tok + t * 12;                   // I32 token ids
  l.bytes = l.ids + t * 4;
  return l;
}

std::vector<int32_t> CudaBackend::HostMeta(const BatchInfo& b) const {
  const int64_t N = b.num_tokens;
  const size_t S = b.seqs.size();
  std::vector<int32_t> host(static_cast<size_t>(3 * N) + S * 6);
  for (size_t i = 0; i < S; ++i) {
    const auto& s = b.seqs[i];
    for (int64_t t = 0; t < s.len; ++t) {
      host[s.offset + t] = s.slot;
      host[N + s.offset + t] = static_cast<int32_t>(s.n_past + t);
      host[2 * N + s.offset + t] = static_cast<int32_t>(i);
    }
    int32_t* m = &host[3 * N + i * 6];
    m[0] = s.slot;
    m[1] = static_cast<int32_t>(s.offset);
    m[2] = static_cast<int32_t>(s.len);
    m[3] = static_cast<int32_t>(s.n_past);
    m[4] = static_cast<int32_t>(s.mode);
    m[5] = s.log_offset;
  }
  return host;
}

auto CudaBackend::UploadMeta(const BatchInfo& b) -> const Meta& {
  std::vector<int32_t> host = HostMeta(b);
  if (host != last_meta_) Stage(b, nullptr, nullptr);
  return meta_;
}

void CudaBackend::Stage(const BatchInfo& b, const std::vector<int32_t>* ids, const std::vector<int64_t>* rows) {
  std::vector<int32_t> host = HostMeta(b);
  const int64_t N = b.num_tokens, S = static_cast<int64_t>(b.seqs.size());
  const int64_t R = rows ? static_cast<int64_t>(rows->size()) : 0;
  if (N > cap_tokens_ || S > cap_seqs_ || R > cap_tokens_) {
    DropGraphs("");
    cudaStreamSynchronize(stream_);
    if (staged_base_) cudaFree(staged_base_);
    if (pinned_) cudaFreeHost(pinned_);
    cap_tokens_ = std::max<int64_t>(4096, 2 * std::max(N, R));
    cap_seqs_ = std::max<int64_t>(1024, 2 * S);
    layout_ = StagingLayout::For(cap_tokens_, cap_seqs_);
    staged_bytes_ = layout_.bytes;
    if (cudaMalloc(&staged_base_, staged_bytes_) != cudaSuccess) throw std::bad_alloc();
    if (cudaMallocHost(&pinned_, staged_bytes_) != cudaSuccess) throw std::bad_alloc();
    char* d = static_cast<char*>(staged_base_);
    staged_rows_ = d + layout_.rows;
    staged_seqs_ = d + layout_.seqs;
    staged_tok_ = d + layout_.tok;
    staged_ids_ = d + layout_.ids;
  }
  // The previous forward's copy out of the pinned buffer must be done before it is rewritten.
  cudaEventSynchronize(staged_);
  // The host buffer has the device buffer's layout: one copy moves it all.
  char* h = static_cast<char*>(pinned_);
  const StagingLayout& L = layout_;
  if (rows) std::memcpy(h + L.rows, rows->data(), R * 8);
  std::memcpy(h + L.seqs, host.data() + 3 * N, S * sizeof(K::SeqMeta));
  // Token arrays at fixed offsets (slot | pos | seq), each cap_tokens_ long.
  std::memcpy(h + L.tok, host.data(), N * 4);
  std::memcpy(h + L.tok + cap_tokens_ * 4, host.data() + N, N * 4);
  std::memcpy(h + L.tok + cap_tokens_ * 8, host.data() + 2 * N, N * 4);
  if (ids) std::memcpy(h + L.ids, ids->data(), ids->size() * 4);
  // One copy covers all of it (the unused tails are cheap at these sizes).
  const size_t used = ids ? L.ids + ids->size() * 4 : L.ids;
  Check(cudaMemcpyAsync(staged_base_, pinned_, used, cudaMemcpyHostToDevice, stream_), "stage");
  Check(cudaEventRecord(staged_, stream_), "stage event");
  meta_.tok_slot = reinterpret_cast<int32_t*>(staged_tok_);
  meta_.tok_pos = meta_.tok_slot + cap_tokens_;
  meta_.tok_seq = meta_.tok_slot + 2 * cap_tokens_;
  meta_.seqs = reinterpret_cast<K::SeqMeta*>(staged_seqs_);
  last_meta_ = std::move(host);
}

void CudaBackend::StageBatch(const BatchInfo& b, const std::vector<int32_t>& ids, const std::vector<int64_t>& rows,
                             Tensor* ids_out, Tensor* rows_out) {
  Stage(b, &ids, &rows);
  const int64_t N = static_cast<int64_t>(ids.size()), R = static_cast<int64_t>(rows.size());
  *ids_out = View(staged_ids_, DType::kI32, {N});
  *rows_out = View(staged_rows_, DType::kI64, {R});
}

}  // namespace specd::cuda_detail

#endif  // SPECD_HAVE_CUDA
