// The op set the Qwen3.5 forward is written against, once, for every device. The CPU backend is
// the fp32 reference; the CUDA backend implements the same ops with bf16 activations. Ops take
// their outputs as arguments (destination-passing) so a device backend can preallocate and
// capture them in graphs.
#pragma once

#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "runtime/batch.h"
#include "runtime/tensor.h"
#include "runtime/token_choice.h"
#include "util/status.h"

namespace specd {

struct GdnDims {
  int num_k_heads = 0;   // Hk
  int num_v_heads = 0;   // Hv (each q/k head serves Hv/Hk consecutive value heads)
  int head_k = 0;        // dk
  int head_v = 0;        // dv
  int conv_kernel = 0;   // K
  int64_t conv_dim() const { return 2LL * num_k_heads * head_k + int64_t{num_v_heads} * head_v; }
};

// Per-layer GDN state of every slot, plus the verify log and the rollback checkpoint.
struct GdnLayerState {
  Tensor conv;       // [slots, K, C]   raw pre-conv in_proj_qkv rows, oldest first (act dtype)
  Tensor rec;        // [slots, Hv, dk, dv] recurrent state, fp32
  Tensor log_raw;    // [slots, L, C]   raw rows of logged tokens
  Tensor log_k;      // [slots, L, Hk, dk] l2-normalised keys, fp32
  Tensor log_v;      // [slots, L, Hv, dv] values, fp32
  Tensor log_g;      // [slots, L, Hv] log-decay, fp32
  Tensor log_beta;   // [slots, L, Hv] write strength, fp32
  Tensor ckpt_conv;  // [slots, K, C]   (only when the cache keeps checkpoints)
  Tensor ckpt_rec;   // [slots, Hv, dk, dv]
};

// Per-layer KV cache (post k_norm, post RoPE keys), paged: rows live in fixed-size blocks of a
// pool that the cache's slots share. Row j of a slot is row j % B of block table[slot][j / B]
// (B = block_size()). Every attention layer of a cache has its own pool and the same table, so
// one table serves all layers; -1 marks a table entry with no block.
struct AttnLayerState {
  Tensor k;            // [num_blocks, Hkv, B, D]
  Tensor v;            // [num_blocks, Hkv, B, D]
  Tensor block_table;  // [slots, max_blocks_per_slot] I32, the same tensor in every layer
  int64_t block_size() const { return k.dim(2); }
  int64_t num_blocks() const { return k.dim(0); }
  int64_t max_blocks_per_slot() const { return block_table.dim(1); }
};

struct AttnDims {
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int rotary_dim = 0;
  float rope_theta = 10000.f;
};

struct MoeTensors {
  Tensor router;        // [E, H]
  Tensor gate_up;       // [E, 2*Ie, H] (gate rows first)
  Tensor down;          // [E, H, Ie]
  Tensor shared_gate;   // [Is, H]
  Tensor shared_up;     // [Is, H]
  // [2*Is, H] when gate and up are stored back to back (shared_gate / shared_up are its views):
  // one weight stream, the SwiGLU in the GEMM's epilogue. Undefined otherwise.
  Tensor shared_gate_up;
  Tensor shared_down;   // [H, Is]
  Tensor shared_router; // [1, H]
  int top_k = 0;
};

// How a backend runs: one typed set of choices, given at creation (MakeBackend) and changed
// only through SetOptions (A/B benchmarks, tests). No environment variables, no string names.
// The CPU backend has no choices to make and ignores all of them.
struct BackendOptions {
  // CUDA graphs for decode / verify / draft forwards.
  bool cuda_graphs = true;
  int graph_limit = 128;        // executables kept at most, least recently replayed dropped first; 0 = none
  int graph_capture_after = 2;  // a batch shape is captured once it has been seen this many times
  // Kernel choices.
  bool gdn_fused = true;            // decode/verify GDN spans in one kernel
  bool gdn_chunked = true;          // chunked GDN prefill (off: token by token, for bisecting)
  bool moe_device = true;           // MoE grouping and experts on the device (off: host lists)
  bool skinny_wide = false;         // 17-64 row projections on the row-invariant form (off: cuBLASLt)
  bool programmatic_launch = true;  // projections start before the kernel ahead of them ends
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual Device device() const = 0;
  // Dtype of activations and stored weights (the CPU reference computes in fp32).
  virtual DType act_dtype() const = 0;
  // Dtype of the residual stream between layers (fp32 on every backend: a bf16 residual adds a
  // rounding per layer that the fixtures show as percent-level logit error).
  virtual DType residual_dtype() const { return DType::kF32; }

  // ---- memory ----
  // Zero-initialised storage.
  virtual Tensor Alloc(DType dtype, std::vector<int64_t> shape) = 0;
  // Storage the caller overwrites completely (activations): no initialising pass.
  virtual Tensor Empty(DType dtype, std::vector<int64_t> shape) { return Alloc(dtype, std::move(shape)); }
  // Copies host data of `src_dtype` into a new tensor of `dst_dtype` (converting floats).
  virtual Tensor Upload(const void* src, DType src_dtype, std::vector<int64_t> shape, DType dst_dtype) = 0;
  // Writes n host elements of `src_dtype` (F32, BF16 or F16; any alignment) into `dst`'s storage
  // from element `offset` on, converting to dst's dtype. The loader writes weights with it straight
  // from the checkpoint's mapped file: no host copy of the tensor. The host data may be reused once
  // it returns; the device copy is ordered before any later op. FinishUploads ends a load.
  virtual void UploadInto(Tensor& dst, int64_t offset, const void* src, DType src_dtype, int64_t n) = 0;
  // Waits for the uploads in flight and frees their staging; an upload's failure is returned here.
  virtual Status FinishUploads() { return Status::Ok(); }
  // Copies a float tensor to the host as fp32.
  virtual std::vector<float> DownloadF32(const Tensor& t) = 0;
  virtual void CopyRows(const Tensor& src, Tensor& dst) = 0;  // same numel, same dtype
  virtual void Zero(Tensor& t) = 0;
  // offset + scale * N(0, 1), from a counter hash of (seed, element index): benchmarks build
  // real-size random models in place, without host copies.
  virtual Tensor Random(DType dtype, std::vector<int64_t> shape, float scale, float offset, uint64_t seed) = 0;
  virtual void Synchronize() {}
  // The first error a device op hit since the last call (ops return void so the forward stays
  // readable; the forward checks this once at its end).
  virtual Status TakeError() { return Status::Ok(); }

  // ---- dense ops ----
  // out[n, :] = table[ids[n], :]
  virtual void Embedding(const Tensor& table, const Tensor& ids, Tensor& out) = 0;
  // out[N, M] = x[N, K] · w[M, K]^T (out may be fp32 where the backend's activations are not)
  virtual void Gemm(const Tensor& x, const Tensor& w, Tensor& out) = 0;
  // RMSNorm over rows of length w.numel(): y = x·rsqrt(mean(x²)+eps)·(unit_offset ? 1+w : w)
  virtual void RmsNorm(const Tensor& x, const Tensor& w, float eps, bool unit_offset, Tensor& out) = 0;
  // out = a + b (out may alias a; a/out may be the fp32 residual with b in the activation dtype)
  virtual void Add(const Tensor& a, const Tensor& b, Tensor& out) = 0;
  // out = silu(gate) * up
  virtual void SwiGlu(const Tensor& gate, const Tensor& up, Tensor& out) = 0;
  // ---- fused forms (defaults compose the ops above; a device backend fuses them) ----
  // h += mix; out = RmsNorm(h): the residual add and the next norm in one pass.
  virtual void AddRmsNorm(Tensor& h, const Tensor& mix, const Tensor& w, float eps, bool unit_offset, Tensor& out) {
    Add(h, mix, h);
    RmsNorm(h, w, eps, unit_offset, out);
  }
  // Several projections of the same x whose weights are stored back to back in `w` (rows of
  // outs[0], then outs[1], ...): outs[i] = x · w.Rows(offset_i, M_i)^T. One weight stream.
  virtual void GemmMulti(const Tensor& x, const Tensor& w, const std::vector<Tensor*>& outs) {
    int64_t r0 = 0;
    for (Tensor* o : outs) {
      const int64_t m = o->dim(-1);
      Gemm(x, w.Rows(r0, m), *o);
      r0 += m;
    }
  }
  // out = silu(x · gate^T) * (x · up^T) with w = [gate; up] ([2I, H]); the products are rounded
  // to the activation dtype before the SwiGLU, as the unfused ops do.
  virtual void GemmSwiGlu(const Tensor& x, const Tensor& w, Tensor& out) {
    const int64_t I = w.dim(0) / 2;
    Tensor g = Empty(act_dtype(), {x.numel() / x.dim(-1), I}), u = Empty(act_dtype(), {x.numel() / x.dim(-1), I});
    Gemm(x, w.Rows(0, I), g);
    Gemm(x, w.Rows(I, I), u);
    SwiGlu(g, u, out);
  }
  // out = x * sigmoid(gate)
  virtual void SigmoidMul(const Tensor& x, const Tensor& gate, Tensor& out) = 0;
  // out[r, :] = x[rows[r], :]; rows: I64 on this backend.
  virtual void GatherRows(const Tensor& x, const Tensor& rows, Tensor& out) = 0;

  // ---- per-forward staging and graphs ----
  // Puts one forward's host inputs on the device in one go (token ids as I32, logits rows as
  // I64) together with the batch layout the ops read, so no op of the forward copies from the
  // host: what makes the forward capturable as a graph.
  virtual void StageBatch(const BatchInfo& b, const std::vector<int32_t>& ids, const std::vector<int64_t>& rows,
                          Tensor* ids_out, Tensor* rows_out) = 0;
  // Graphs of whole forwards, keyed by what fixes their launches: the model, the cache and the
  // batch's shape (tokens, sequences, longest span, logits rows). Slots, lengths, modes, log
  // offsets and positions are read from the staged layout, so one graph serves any batch of its
  // shape. Every graph allocates from one shared workspace (they replay one at a time), so
  // graph memory is bounded by the largest captured forward plus the per-graph executables,
  // at most graph_limit of them (GraphStats).
  // Replay: false when no graph exists for the key; otherwise *outs are tensors of their own (the
  // graph's outputs, in the order the capture named them, copied out of the shared workspace).
  // Capture: false when this backend does not capture now (graphs off, or the key not yet seen
  // often enough: GraphKeeper); then the caller just runs the ops.
  virtual bool ReplayGraphOutputs(const std::string& key, std::vector<Tensor>* outs) { return false; }
  virtual bool BeginGraphCapture(const std::string& key) { return false; }
  virtual Status EndGraphCaptureOutputs(const std::string& key, const std::vector<Tensor>& outs) {
    return Status::Ok();
  }
  // The one-output forms.
  bool ReplayGraph(const std::string& key, Tensor* out) {
    std::vector<Tensor> outs;
    if (!ReplayGraphOutputs(key, out != nullptr ? &outs : nullptr)) return false;
    if (out != nullptr) *out = outs.empty() ? Tensor{} : std::move(outs[0]);
    return true;
  }
  Status EndGraphCapture(const std::string& key, const Tensor& out) { return EndGraphCaptureOutputs(key, {out}); }
  // Ends a capture that an exception (std::bad_alloc) interrupted; nothing of it ran or is kept.
  virtual void AbortGraphCapture() {}
  // Forgets every graph whose key contains `needle` (a model or cache going away).
  virtual void DropGraphs(const std::string& needle) {}
  // Whether forwards should be padded to a few graph shapes (Qwen35Model::Forward): only where
  // graphs are captured; elsewhere padding is wasted work.
  virtual bool CapturesGraphs() const { return false; }
  struct GraphStats {
    int64_t graphs = 0;          // executables held
    int64_t limit = 0;
    int64_t workspace_bytes = 0; // the shared activation workspace (all graphs together)
    int64_t exec_bytes = 0;      // device memory of the executables (measured at instantiation)
    int64_t pool_cached_bytes = 0;  // freed blocks the backend keeps for reuse (capped)
    int64_t captures = 0, replays = 0, evictions = 0, capture_failures = 0;
  };
  virtual GraphStats graph_stats() const { return {}; }
  // Device memory in use by the whole device (total - free), -1 where there is no device.
  virtual int64_t device_memory_used() const { return -1; }
  // The device's memory, -1 where there is no device (the memory plan's budget).
  virtual int64_t device_memory_total() const { return -1; }
  // After an allocation failure: drops every graph and gives cached blocks back to the device,
  // so that what is left can serve the next step.
  virtual void ReleaseCachedMemory() {}
  // Allocation failures so far (real and injected). An allocation that cannot be served throws
  // std::bad_alloc inside the backend; the engine turns it into ResourceExhausted at its
  // boundary (Qwen35Model::Forward, SpeculativeEngine, ModelCache::Create): no exception leaves it.
  int64_t alloc_failures() const { return alloc_failures_; }
  // Testing: allocation number `after` + 1 from now on, and the `count` - 1 after it, fail as if
  // the device were full (--debug-fail-alloc).
  void InjectAllocFailures(int64_t after, int64_t count) {
    inject_after_ = after;
    inject_count_ = count;
  }

  // The options in force, and a change of them (lowering graph_limit drops the graphs kept;
  // turning cuda_graphs off keeps them unused).
  const BackendOptions& options() const { return options_; }
  void SetOptions(const BackendOptions& o) {
    options_ = o;
    ApplyOptions();
  }
  // Per-op device time (benchmarks): on = time every op with events (and run op by op);
  // the report lists total ms and calls per op, largest first, and resets the counters.
  virtual void SetProfiling(bool on) {}
  virtual std::string ProfileReport() { return {}; }

  // ---- attention ----
  // q2 [N, Hq*2D] (per head: D query then D gate) -> q [N, Hq*D], gate [N, Hq*D]
  virtual void SplitQueryGate(const Tensor& q2, int num_heads, int head_dim, Tensor& q, Tensor& gate) = 0;
  // Rotate-half partial RoPE in place on x [N, heads*D] at each token's absolute position.
  virtual void Rope(Tensor& x, int num_heads, const AttnDims& d, const BatchInfo& b) = 0;
  // Copies a host block table into its tensor (same numel), ordered before every op issued after
  // it. Called outside graph capture: a replay reads the tensor, so it sees the new contents.
  virtual void StageBlockTable(const std::vector<int32_t>& table, Tensor& dst) = 0;
  // SplitQueryGate, RmsNorm(1 + w) of q and of k (k in place), Rope of both: the attention
  // layer's q/k preparation as one op (a device backend fuses it).
  virtual void QkNormRope(const Tensor& q2, Tensor& k, const Tensor& q_norm, const Tensor& k_norm, float eps,
                          const AttnDims& d, const BatchInfo& b, Tensor& q, Tensor& gate) {
    SplitQueryGate(q2, d.num_q_heads, d.head_dim, q, gate);
    RmsNorm(q, q_norm, eps, true, q);
    RmsNorm(k, k_norm, eps, true, k);
    Rope(q, d.num_q_heads, d, b);
    Rope(k, d.num_kv_heads, d, b);
  }
  // Appends k/v of each span at positions n_past.. (through the slot's block table, whose blocks
  // must cover them) and attends causally over the slot's cache.
  virtual void Attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttnDims& d,
                         AttnLayerState& st, const BatchInfo& b, Tensor& out) = 0;

  // ---- gated delta net ----
  // y[t] = silu(causal depthwise conv over [conv window | p]) per span; updates/logs the window
  // per span mode.
  virtual void CausalConvSilu(const Tensor& p, const Tensor& w, const GdnDims& d, GdnLayerState& st,
                              const BatchInfo& b, Tensor& y) = 0;
  // The gated delta rule: splits y into q/k/v, l2-normalises q and k, computes beta =
  // sigmoid(braw), g = -exp(A_log)·softplus(araw + dt_bias), runs the chunked (T > 1) or
  // recurrent (T = 1) form from the slot's state; writes o [N, Hv*dv].
  virtual void GatedDeltaRule(const Tensor& y, const Tensor& braw, const Tensor& araw,
                              const Tensor& a_log, const Tensor& dt_bias, const GdnDims& d,
                              GdnLayerState& st, const BatchInfo& b, Tensor& o) = 0;
  // out = (rmsnorm(o) * w) * silu(z), per value head rows of dv.
  virtual void GatedRmsNorm(const Tensor& o, const Tensor& z, const Tensor& w, float eps, Tensor& out) = 0;
  // Makes the slot's state that of having consumed the first `keep` logged tokens: starts from
  // the checkpoint when `from_checkpoint`, else from the live state, and replays the log.
  virtual void GdnCommit(GdnLayerState& st, const GdnDims& d, int slot, int keep, bool from_checkpoint) = 0;
  // GdnCommit for every GDN layer of a model at once (a device backend batches the launches).
  virtual void GdnCommitLayers(std::vector<GdnLayerState>& layers, const GdnDims& d, int slot, int keep,
                               bool from_checkpoint) {
    for (auto& l : layers) GdnCommit(l, d, slot, keep, from_checkpoint);
  }
  // Copies the slot's live conv window and recurrent state into its checkpoint.
  virtual void GdnCheckpoint(GdnLayerState& st, int slot) = 0;
  // Zeroes the slot's conv window and recurrent state (a fresh sequence).
  virtual void GdnReset(GdnLayerState& st, int slot) = 0;

  // ---- MoE ----
  // Routed experts (fp32 softmax router, top-k, renormalised) + sigmoid-gated shared expert.
  virtual void MoeFfn(const Tensor& m, const MoeTensors& w, Tensor& out) = 0;
  // Whether MoeFfn over `rows` tokens of these shapes issues its work without waiting for the
  // device, so a forward holding it can be captured in a graph. Never while routing is recorded.
  virtual bool MoeFfnCapturable(int64_t rows, int64_t hidden, int64_t inter, int experts, int top_k) const {
    return false;
  }

  // ---- token choice (so a step copies ids to the host, not [rows, V] logits) ----
  // ids[r] = ArgmaxF(logits[r, :]) exactly (speculative/sampling.h: the lowest id of the row's maximum;
  // NaN never wins, except that a NaN at id 0 gives 0). logits fp32 [R, V]; ids I32 [R].
  virtual void ArgmaxRows(const Tensor& logits, Tensor& ids) = 0;
  // logits[r, ban[r, j]] = -inf for each ban[r, j] in [0, V), in place (the min_tokens mask);
  // ban I32 [R, M], -1 pads rows with fewer ids.
  virtual void MaskIds(Tensor& logits, const Tensor& ban) = 0;
  // Copies an I32 tensor to the host.
  virtual std::vector<int32_t> DownloadI32(const Tensor& t) = 0;
  // Token choice for every row of logits fp32 [R, V] per rows[r] (runtime/token_choice.h; the
  // rule is speculative/sampling.h ChooseRow): out I32 [R, 2] = (token, accept). The logits of sampled
  // rows are replaced by their processed distribution p (greedy rows are left as they are).
  // q fp32 [Q, V]: the draft distributions that rows' q_row index (undefined when none does).
  virtual void ChooseTokens(Tensor& logits, const std::vector<TokenRowSpec>& rows, const Tensor& q,
                            Tensor& out) = 0;

  // ---- test hooks ----
  // Routing record/replay: while `record` is set, every MoeFfn appends its chosen experts
  // ([N * top_k], token-major, in top-k order) to it; while `force` is set, every MoeFfn takes
  // the next entry instead of its own top-k (weights are still this backend's probabilities of
  // the forced experts, renormalised). A bf16 device run can flip routing near-ties; replaying
  // its routing on the fp32 reference compares everything else row by row. Supported: record on
  // every backend, force on the CPU reference.
  void SetMoeRoutingHooks(std::vector<std::vector<int32_t>>* record, const std::vector<std::vector<int32_t>>* force) {
    moe_record_ = record;
    moe_force_ = force;
    moe_force_next_ = 0;
  }
  // Graph replays since construction (tests assert that captured graphs actually ran).
  int64_t graph_replays() const { return graph_stats().replays; }

 protected:
  // Makes options() take effect (a device backend's graph keeper and kernel choices).
  virtual void ApplyOptions() {}
  // Every allocation of a backend goes through this first: an injected failure throws here.
  void CountAllocation() {
    if (inject_count_ <= 0) return;
    if (inject_after_ > 0) {
      --inject_after_;
      return;
    }
    --inject_count_;
    ++alloc_failures_;
    throw std::bad_alloc();
  }
  void NoteAllocFailure() { ++alloc_failures_; }
  // The forced routing of the next MoeFfn call, or nullptr.
  const std::vector<int32_t>* NextForcedRouting() {
    if (moe_force_ == nullptr || moe_force_next_ >= moe_force_->size()) return nullptr;
    return &(*moe_force_)[moe_force_next_++];
  }
  std::vector<std::vector<int32_t>>* moe_record_ = nullptr;

 private:
  BackendOptions options_;
  const std::vector<std::vector<int32_t>>* moe_force_ = nullptr;
  size_t moe_force_next_ = 0;
  int64_t alloc_failures_ = 0;
  int64_t inject_after_ = 0, inject_count_ = 0;
};

// Changes some options and keeps the others:
//   ChangeOptions(be, [](BackendOptions& o) { o.gdn_fused = false; });
template <typename F>
void ChangeOptions(Backend& be, F&& change) {
  BackendOptions o = be.options();
  change(o);
  be.SetOptions(o);
}

std::unique_ptr<Backend> MakeCpuBackend();
// Returns an error when the build has no CUDA or no device is present.
StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& device, const BackendOptions& options = {});
// CUDA devices visible to this process (0 in a build without CUDA): tests skip only when this
// is 0, so a broken CUDA backend on a GPU machine fails instead of skipping.
int CudaDeviceCount();

}  // namespace specd
