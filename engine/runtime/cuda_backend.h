// The CUDA backend (internal to runtime/cuda_*.cpp; everything else reaches it through Backend
// and MakeBackend("cuda")): the same op set as the CPU reference, on specd's kernels (kernels/)
// and cuBLASLt for projections of more than 16 rows. bf16 activations and weights, fp32
// accumulation and GDN state. One class, its members defined by concern:
//   cuda_backend.cpp      construction, memory (alloc, upload, download), errors
//   cuda_staging.cpp      the batch layout staged for the kernels (slots, positions, spans)
//   cuda_dense.cpp        embedding, GEMMs, norms, elementwise
//   cuda_attention.cpp    rope, paged KV attention, block tables
//   cuda_gdn.cpp          causal conv, gated delta rule, commit / checkpoint (the rollback)
//   cuda_token_choice.cpp argmax, masks, sampled token choice
//   cuda_moe.cpp          MoE routing and experts
//   cuda_graphs.cpp       CUDA graphs, options, memory policy, profiling
#pragma once
#ifdef SPECD_HAVE_CUDA

#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "runtime/backend.h"
#include "runtime/cuda_lt_gemm.h"
#include "runtime/cuda_memory.h"
#include "runtime/graph_memory.h"
#include "specd/kernels.h"

namespace specd::cuda_detail {

namespace K = specd::kernels;
using K::bf16;

// Where each array of a staged batch lives (cuda_staging.cpp), as byte offsets that are the same
// in the pinned host buffer and in the device buffer, so one copy moves the whole layout.
// Computed once per capacity; both sides read it.
struct StagingLayout {
  size_t rows = 0;  // I64 [cap_tokens]: the logits rows
  size_t seqs = 0;  // SeqMeta [cap_seqs]
  size_t tok = 0;   // I32 [3][cap_tokens]: slot | position | span index per token
  size_t ids = 0;   // I32 [cap_tokens]: token ids
  size_t bytes = 0;
  static StagingLayout For(int64_t cap_tokens, int64_t cap_seqs);
};

class CudaBackend final : public Backend {
 public:
  CudaBackend();
  ~CudaBackend() override;
  std::string name() const override { return "cuda"; }
  Device device() const override { return Device::kCuda; }
  DType act_dtype() const override { return DType::kBF16; }

  // ---- memory ----
  Tensor Alloc(DType dtype, std::vector<int64_t> shape) override;
  // Throws std::bad_alloc when the device is full (the engine's boundary turns it into
  // ResourceExhausted); before that, cached blocks and (outside a capture) every graph go back.
  Tensor Empty(DType dtype, std::vector<int64_t> shape) override;
  Tensor Upload(const void* src, DType src_dtype, std::vector<int64_t> shape, DType dst_dtype) override;
  void UploadInto(Tensor& dst, int64_t offset, const void* src, DType src_dtype, int64_t n) override;
  Status FinishUploads() override;
  std::vector<float> DownloadF32(const Tensor& t) override;
  void CopyRows(const Tensor& src, Tensor& dst) override;
  void Zero(Tensor& t) override { Check(cudaMemsetAsync(t.data, 0, t.nbytes(), stream_), "zero"); }
  Tensor Random(DType dtype, std::vector<int64_t> shape, float scale, float offset, uint64_t seed) override;
  void Synchronize() override { Check(cudaStreamSynchronize(stream_), "sync"); }
  Status TakeError() override;

  // ---- dense ----
  void Embedding(const Tensor& table, const Tensor& ids, Tensor& out) override;
  // out[N, M] = x[N, K] w[M, K]^T: column-major out^T[M, N] = w_cm^T[M, K] x_cm[K, N].
  void Gemm(const Tensor& x, const Tensor& w, Tensor& out) override;
  void RmsNorm(const Tensor& x, const Tensor& w, float eps, bool unit_offset, Tensor& out) override;
  void Add(const Tensor& a, const Tensor& b, Tensor& out) override;
  void AddRmsNorm(Tensor& h, const Tensor& mix, const Tensor& w, float eps, bool unit_offset, Tensor& out) override;
  void GemmMulti(const Tensor& x, const Tensor& w, const std::vector<Tensor*>& outs) override;
  void GemmSwiGlu(const Tensor& x, const Tensor& w, Tensor& out) override;
  void SwiGlu(const Tensor& gate, const Tensor& up, Tensor& out) override;
  void SigmoidMul(const Tensor& x, const Tensor& gate, Tensor& out) override;
  void GatherRows(const Tensor& x, const Tensor& rows, Tensor& out) override;

  void StageBatch(const BatchInfo& b, const std::vector<int32_t>& ids, const std::vector<int64_t>& rows,
                  Tensor* ids_out, Tensor* rows_out) override;

  bool ReplayGraphOutputs(const std::string& key, std::vector<Tensor>* outs) override;
  void ApplyOptions() override;
  bool BeginGraphCapture(const std::string& key) override;
  Status EndGraphCaptureOutputs(const std::string& key, const std::vector<Tensor>& outs) override;
  void AbortGraphCapture() override;
  void DropGraphs(const std::string& needle) override;
  bool CapturesGraphs() const override { return graphs_enabled_ && !profiling_ && keeper_.limit() > 0; }
  GraphStats graph_stats() const override;
  int64_t device_memory_used() const override;
  int64_t device_memory_total() const override;
  void ReleaseCachedMemory() override;
  void SetProfiling(bool on) override;
  std::string ProfileReport() override;

  // ---- attention ----
  void SplitQueryGate(const Tensor& q2, int num_heads, int head_dim, Tensor& q, Tensor& gate) override;
  void QkNormRope(const Tensor& q2, Tensor& k, const Tensor& q_norm, const Tensor& k_norm, float eps, const AttnDims& d,
                  const BatchInfo& b, Tensor& q, Tensor& gate) override;
  void Rope(Tensor& x, int num_heads, const AttnDims& d, const BatchInfo& b) override;
  void StageBlockTable(const std::vector<int32_t>& table, Tensor& dst) override;
  void Attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttnDims& d, AttnLayerState& st,
                 const BatchInfo& b, Tensor& out) override;

  // ---- GDN ----
  void CausalConvSilu(const Tensor& p, const Tensor& w, const GdnDims& d, GdnLayerState& st, const BatchInfo& b,
                      Tensor& y) override;
  void GatedDeltaRule(const Tensor& y, const Tensor& braw, const Tensor& araw, const Tensor& a_log,
                      const Tensor& dt_bias, const GdnDims& d, GdnLayerState& st, const BatchInfo& b,
                      Tensor& o) override;
  void GatedRmsNorm(const Tensor& o, const Tensor& z, const Tensor& w, float eps, Tensor& out) override;
  void GdnCommit(GdnLayerState& st, const GdnDims& d, int slot, int keep, bool from_checkpoint) override;
  void GdnCommitLayers(std::vector<GdnLayerState>& layers, const GdnDims& d, int slot, int keep,
                       bool from_checkpoint) override;
  // Every layer's window and state of the slot in two launches (not two to four per layer).
  void CommitLayers(const std::vector<GdnLayerState*>& layers, const GdnDims& d, int slot, int keep,
                    bool from_checkpoint);
  void GdnCheckpoint(GdnLayerState& st, int slot) override;
  void GdnReset(GdnLayerState& st, int slot) override;

  // ---- token choice ----
  void ArgmaxRows(const Tensor& logits, Tensor& ids) override;
  void MaskIds(Tensor& logits, const Tensor& ban) override;
  std::vector<int32_t> DownloadI32(const Tensor& t) override;

  void ChooseTokens(Tensor& logits, const std::vector<TokenRowSpec>& rows, const Tensor& q, Tensor& out) override;

  // ---- MoE: routing, grouping and experts on the device up to kMoeDeviceMaxRows rows (nothing
  // waits for the host, so the forward can be captured); past that, per-expert row lists on the
  // host and cuBLAS GEMMs ----
  bool MoeFfnCapturable(int64_t rows, int64_t hidden, int64_t inter, int experts, int top_k) const override {
    return moe_device_ && moe_record_ == nullptr && K::MoeDeviceApplies(rows, hidden, inter, experts, top_k);
  }
  void MoeFfn(const Tensor& m, const MoeTensors& w, Tensor& out) override;

 private:
  static bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

  // sd = the shared expert's output, gl = its gate logit (MoeFinish applies the sigmoid gate).
  void SharedExpert(const Tensor& m, const MoeTensors& w, Tensor* sd, Tensor* gl);

  // Prefill (past kMoeDeviceMaxRows rows): routing on the host, per-expert cuBLAS GEMMs over its
  // gathered rows, acc[t] += w * y with experts in ascending id.
  void MoeRoutedHost(const Tensor& m, const MoeTensors& w, const Tensor& ids, const Tensor& wts, Tensor& acc);

  struct Meta {
    int32_t* tok_slot = nullptr;
    int32_t* tok_pos = nullptr;
    int32_t* tok_seq = nullptr;
    K::SeqMeta* seqs = nullptr;
  };

  static bf16* B(const Tensor& t) { return static_cast<bf16*>(t.data); }

  void Check(cudaError_t e, const char* what);
  void Fail(std::string msg) {
    if (error_.ok()) error_ = Internal("{}", msg);
  }

  static Tensor View(void* p, DType dt, std::vector<int64_t> shape);

  // The batch layout the ops read: per token (slot, position, span index), per span a SeqMeta.
  // Host-side values are compared with what is staged, so ops called outside a forward (tests)
  // stage their own layout, and a forward's ops all find theirs staged by StageBatch.
  std::vector<int32_t> HostMeta(const BatchInfo& b) const;

  const Meta& UploadMeta(const BatchInfo& b);

  // Copies layout (+ ids and rows when given) through pinned memory into fixed device buffers.
  // The addresses stay put while capacity suffices, so captured graphs keep reading them; when a
  // batch needs more, the buffers grow and every graph is dropped.
  void Stage(const BatchInfo& b, const std::vector<int32_t>* ids, const std::vector<int64_t>* rows);

  // Event pair around one op when profiling.
  class Prof {
   public:
    Prof(CudaBackend* b, std::string name) : b_(b->profiling_ ? b : nullptr), name_(std::move(name)) {
      if (!b_) return;
      cudaEventCreate(&e0_);
      cudaEventCreate(&e1_);
      cudaEventRecord(e0_, b_->stream_);
    }
    ~Prof() {
      if (!b_) return;
      cudaEventRecord(e1_, b_->stream_);
      b_->prof_events_.push_back({name_, e0_, e1_});
    }

   private:
    CudaBackend* b_;
    std::string name_;
    cudaEvent_t e0_ = nullptr, e1_ = nullptr;
  };
  struct ProfEvent {
    std::string name;
    cudaEvent_t e0, e1;
  };

  // A kept graph; its outputs live in the shared workspace (ReplayGraphOutputs copies them out).
  struct GraphOutput {
    void* data = nullptr;
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;
  };
  struct Graph {
    cudaGraphExec_t exec = nullptr;
    std::vector<GraphOutput> outs;
    int64_t exec_bytes = 0;
  };
  std::map<std::string, Graph>::iterator DestroyGraph(std::map<std::string, Graph>::iterator it);
  // A key whose capture failed is not tried again (bounded: a long-running server forgets).
  void NoteCaptureFailure(const std::string& key);
  static constexpr size_t kBlasWorkspace = size_t{32} << 20;
  // Blocks kept for reuse at most (DevicePool): the activations of a few large forwards.
  static constexpr size_t kPoolMaxCached = size_t{2} << 30;
  std::unique_ptr<LtGemm> lt_;  // borrows blas_ws_

  std::shared_ptr<DevicePool> pool_;
  std::shared_ptr<SharedArena> arena_;
  // 128 graphs: the padded decode/verify/draft shapes of a 64-sequence batch at k <= 8 fit; each
  // executable costs device memory of its own (docs/PERFORMANCE.md, graph memory).
  GraphKeeper keeper_{128, 2};
  int64_t captures_ = 0, replays_ = 0, evictions_ = 0, capture_failures_ = 0, exec_bytes_ = 0;
  cudaStream_t stream_ = nullptr;
  Status error_;
  std::vector<int32_t> last_meta_;
  Meta meta_;
  void* blas_ws_ = nullptr;
  cudaEvent_t staged_ = nullptr;
  void* staged_base_ = nullptr;
  void* pinned_ = nullptr;
  size_t staged_bytes_ = 0;
  // Weight loading (UploadInto): two pinned buffers taken in turn, so that the host converts or
  // copies one chunk while the previous one's copy to the device runs.
  struct LoadStage {
    void* buf = nullptr;
    cudaEvent_t copied = nullptr;
  };
  static constexpr size_t kLoadStageBytes = size_t{64} << 20;
  LoadStage load_stages_[2];
  int next_load_stage_ = 0;
  bool load_unpinned_ = false;  // pinned memory could not be had: chunks go synchronously from the heap
  int64_t cap_tokens_ = 0, cap_seqs_ = 0;
  StagingLayout layout_;
  char* staged_rows_ = nullptr;
  char* staged_seqs_ = nullptr;
  char* staged_tok_ = nullptr;
  char* staged_ids_ = nullptr;
  bool graphs_enabled_ = true;
  bool gdn_chunked_ = true;
  bool moe_device_ = true;  // off: the host-list path at every size (benchmarks A/B)
  bool gdn_fused_ = true;
  bool profiling_ = false;
  std::vector<ProfEvent> prof_events_;
  bool capturing_ = false;
  std::map<std::string, Graph> graphs_;
  std::set<std::string> failed_keys_;
  PinnedStager table_stager_;  // KV block tables (StageBlockTable)
  PinnedStager rows_stager_;   // token-choice row specs (ChooseTokens)
};

}  // namespace specd::cuda_detail

#endif  // SPECD_HAVE_CUDA
