// The CUDA backend: the same op set as the CPU reference, on specd's kernels (kernels/) and
// cuBLASLt for projections of more than 16 rows. bf16 activations and weights, fp32 accumulation and GDN state.
#ifdef SPECD_HAVE_CUDA

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <cstdlib>
#include <stdexcept>

#include "runtime/backend.h"
#include "runtime/cuda_lt_gemm.h"
#include "runtime/graph_memory.h"
#include "specd/kernels.h"

namespace specd {
namespace {

namespace K = specd::kernels;
using K::bf16;

// Size-bucketed cache of device blocks: a forward allocates the same shapes every step, and
// cudaMalloc/cudaFree synchronise the device. Under a server's traffic the sizes are not the
// same every step (prefill chunks of any length, logits of any number of rows), so buckets past
// 1 MiB are geometric (8 per octave: at most 12.5 % slack) and the bytes held in the cache are
// capped: a cache keyed by exact sizes grew by gigabytes as new row counts kept arriving.
class DevicePool {
 public:
  explicit DevicePool(size_t max_cached) : max_cached_(max_cached) {}
  ~DevicePool() { Trim(); }
  // nullptr when the device has no room even after the cached blocks went back.
  void* Get(size_t bytes, size_t* bucket) {
    *bucket = Bucket(bytes);
    std::lock_guard<std::mutex> g(mu_);
    auto& v = free_[*bucket];
    if (!v.empty()) {
      void* p = v.back();
      v.pop_back();
      cached_ -= *bucket;
      return p;
    }
    void* p = nullptr;
    if (cudaMalloc(&p, *bucket) != cudaSuccess) {
      cudaGetLastError();  // an allocation failure is not sticky: clear it
      TrimLocked(0);
      if (cudaMalloc(&p, *bucket) != cudaSuccess) {
        cudaGetLastError();
        return nullptr;
      }
    }
    return p;
  }
  void Put(void* p, size_t bucket) {
    std::lock_guard<std::mutex> g(mu_);
    free_[bucket].push_back(p);
    cached_ += bucket;
    // Over the cap: give the largest cached blocks back until half of it is left (each cudaFree
    // waits for the device, so trim in one go, rarely).
    if (cached_ > max_cached_) TrimLocked(max_cached_ / 2);
  }
  void Trim() {
    std::lock_guard<std::mutex> g(mu_);
    TrimLocked(0);
  }
  size_t cached_bytes() const {
    std::lock_guard<std::mutex> g(mu_);
    return cached_;
  }
  static size_t Bucket(size_t b) {
    if (b <= 256) return 256;
    // Powers of two up to 1 MiB; then 8 steps per octave up to 256 MiB; past that (weights, KV
    // pools: allocated once) 2 MiB granules, so big tensors waste little.
    if (b <= (size_t{1} << 20)) {
      size_t s = 256;
      while (s < b) s <<= 1;
      return s;
    }
    if (b <= (size_t{256} << 20)) {
      size_t octave = size_t{1} << 20;
      while (octave * 2 < b) octave <<= 1;
      const size_t step = octave / 8;
      return (b + step - 1) / step * step;
    }
    return (b + (size_t{2} << 20) - 1) / (size_t{2} << 20) * (size_t{2} << 20);
  }

 private:
  // Frees cached blocks, largest first, until at most `keep` bytes stay cached.
  void TrimLocked(size_t keep) {
    for (auto it = free_.rbegin(); it != free_.rend() && cached_ > keep; ++it) {
      auto& l = it->second;
      while (!l.empty() && cached_ > keep) {
        cudaFree(l.back());
        l.pop_back();
        cached_ -= it->first;
      }
    }
  }
  mutable std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
  const size_t max_cached_;
};

// The shared workspace of every captured graph (runtime/graph_memory.h) with the lock that
// tensor deleters need (a tensor may die on another thread than the one that captured).
struct SharedArena {
  SharedArena()
      : arena(
            [](size_t n) -> void* {
              void* p = nullptr;
              if (cudaMalloc(&p, n) != cudaSuccess) {
                cudaGetLastError();
                return nullptr;
              }
              return p;
            },
            [](void* p) { cudaFree(p); }, size_t{64} << 20) {}
  std::mutex mu;
  GraphArena arena;
};

// Host data copied to the device without waiting: through a pinned buffer, so the copy is
// asynchronous; the previous copy must have left the buffer before it is rewritten.
class PinnedStager {
 public:
  ~PinnedStager() {
    if (event_) cudaEventDestroy(event_);
    if (pinned_) cudaFreeHost(pinned_);
  }
  cudaError_t Copy(const void* src, size_t bytes, void* dst, cudaStream_t s) {
    cudaError_t e = cudaSuccess;
    if (event_ == nullptr) {
      e = cudaEventCreateWithFlags(&event_, cudaEventDisableTiming);
    } else {
      e = cudaEventSynchronize(event_);
    }
    if (e != cudaSuccess) return e;
    if (bytes > bytes_) {
      if (pinned_) cudaFreeHost(pinned_);
      pinned_ = nullptr;
      bytes_ = 0;
      if ((e = cudaMallocHost(&pinned_, bytes)) != cudaSuccess) return e;
      bytes_ = bytes;
    }
    std::memcpy(pinned_, src, bytes);
    if ((e = cudaMemcpyAsync(dst, pinned_, bytes, cudaMemcpyHostToDevice, s)) != cudaSuccess) return e;
    return cudaEventRecord(event_, s);
  }

 private:
  void* pinned_ = nullptr;
  size_t bytes_ = 0;
  cudaEvent_t event_ = nullptr;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend() : pool_(std::make_shared<DevicePool>(kPoolMaxCached)), arena_(std::make_shared<SharedArena>()) {
    cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
    // A fixed workspace: cuBLAS must not allocate inside a graph capture.
    cudaMalloc(&blas_ws_, kBlasWorkspace);
    lt_ = std::make_unique<LtGemm>(blas_ws_, kBlasWorkspace);
    cudaEventCreateWithFlags(&staged_, cudaEventDisableTiming);
    ApplyOptions();
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    DropGraphs("");
    if (pinned_) cudaFreeHost(pinned_);
    cudaFree(blas_ws_);
    cudaEventDestroy(staged_);
    cudaStreamDestroy(stream_);
  }
  std::string name() const override { return "cuda"; }
  Device device() const override { return Device::kCuda; }
  DType act_dtype() const override { return DType::kBF16; }

  // ---- memory ----
  Tensor Alloc(DType dtype, std::vector<int64_t> shape) override {
    Tensor t = Empty(dtype, std::move(shape));
    Check(cudaMemsetAsync(t.data, 0, t.nbytes(), stream_), "memset");
    return t;
  }
  // Throws std::bad_alloc when the device is full (the engine's boundary turns it into
  // ResourceExhausted); before that, cached blocks and (outside a capture) every graph go back.
  Tensor Empty(DType dtype, std::vector<int64_t> shape) override {
    Tensor t;
    t.dtype = dtype;
    t.shape = std::move(shape);
    t.device = Device::kCuda;
    const size_t bytes = std::max<size_t>(t.nbytes(), 1);
    CountAllocation();
    void* p = nullptr;
    if (capturing_) {
      // The graphs' shared workspace: blocks a capture frees are reused by its later ops and by
      // other graphs' captures, never by op-by-op work (which would race a replay).
      auto arena = arena_;
      {
        std::lock_guard<std::mutex> g(arena->mu);
        p = arena->arena.Get(bytes);
      }
      if (p == nullptr) {
        NoteAllocFailure();
        throw std::bad_alloc();
      }
      t.owner = std::shared_ptr<void>(p, [arena](void* q) {
        std::lock_guard<std::mutex> g(arena->mu);
        arena->arena.Put(q);
      });
    } else {
      size_t bucket = 0;
      p = pool_->Get(bytes, &bucket);
      if (p == nullptr) {
        ReleaseCachedMemory();
        p = pool_->Get(bytes, &bucket);
      }
      if (p == nullptr) {
        NoteAllocFailure();
        throw std::bad_alloc();
      }
      auto pool = pool_;
      t.owner = std::shared_ptr<void>(p, [pool, bucket](void* q) { pool->Put(q, bucket); });
    }
    t.data = p;
    return t;
  }
  Tensor Upload(const void* src, DType src_dtype, std::vector<int64_t> shape, DType dst_dtype) override {
    Tensor t = Alloc(dst_dtype, std::move(shape));
    const int64_t n = t.numel();
    std::vector<uint16_t> b16;
    std::vector<float> f32;
    const void* from = src;
    if (src_dtype != dst_dtype) {
      if (dst_dtype == DType::kBF16 && src_dtype == DType::kF32) {
        b16.resize(n);
        const float* s = static_cast<const float*>(src);
        for (int64_t i = 0; i < n; ++i) b16[i] = F32ToBf16(s[i]);
        from = b16.data();
      } else if (dst_dtype == DType::kF32 && (src_dtype == DType::kBF16 || src_dtype == DType::kF16)) {
        f32.resize(n);
        const uint16_t* s = static_cast<const uint16_t*>(src);
        for (int64_t i = 0; i < n; ++i) f32[i] = src_dtype == DType::kBF16 ? Bf16ToF32(s[i]) : F16ToF32(s[i]);
        from = f32.data();
      } else {
        throw std::invalid_argument("cuda Upload: unsupported conversion");
      }
    }
    Check(cudaMemcpyAsync(t.data, from, t.nbytes(), cudaMemcpyHostToDevice, stream_), "upload");
    Check(cudaStreamSynchronize(stream_), "upload sync");  // host buffers die with this scope
    return t;
  }
  std::vector<float> DownloadF32(const Tensor& t) override {
    std::vector<float> out(static_cast<size_t>(t.numel()));
    if (t.dtype == DType::kF32) {
      Check(cudaMemcpyAsync(out.data(), t.data, t.nbytes(), cudaMemcpyDeviceToHost, stream_), "download");
      Check(cudaStreamSynchronize(stream_), "download sync");
    } else if (t.dtype == DType::kBF16) {
      std::vector<uint16_t> b(out.size());
      Check(cudaMemcpyAsync(b.data(), t.data, t.nbytes(), cudaMemcpyDeviceToHost, stream_), "download");
      Check(cudaStreamSynchronize(stream_), "download sync");
      for (size_t i = 0; i < out.size(); ++i) out[i] = Bf16ToF32(b[i]);
    } else {
      throw std::invalid_argument("DownloadF32 of a non-float tensor");
    }
    return out;
  }
  void CopyRows(const Tensor& src, Tensor& dst) override {
    if (src.nbytes() != dst.nbytes()) throw std::invalid_argument("CopyRows: size mismatch");
    Check(cudaMemcpyAsync(dst.data, src.data, src.nbytes(), cudaMemcpyDeviceToDevice, stream_), "copy");
  }
  void Zero(Tensor& t) override { Check(cudaMemsetAsync(t.data, 0, t.nbytes(), stream_), "zero"); }
  Tensor Random(DType dtype, std::vector<int64_t> shape, float scale, float offset, uint64_t seed) override {
    Tensor t = Alloc(dtype, std::move(shape));
    Check(K::RandomNormal(t.data, dtype == DType::kBF16, t.numel(), scale, offset, seed, stream_), "random");
    return t;
  }
  void Synchronize() override { Check(cudaStreamSynchronize(stream_), "sync"); }
  Status TakeError() override {
    Status s = error_;
    error_ = Status::Ok();
    return s;
  }

  // ---- dense ----
  void Embedding(const Tensor& table, const Tensor& ids, Tensor& out) override {
    Prof prof_(this, "embedding");
    Check(K::EmbeddingGather(B(table), table.dim(0), table.dim(1), ids.ptr<int32_t>(), ids.numel(), out.data,
                             out.dtype == DType::kF32, stream_),
          "embedding");
  }
  // out[N, M] = x[N, K] w[M, K]^T: column-major out^T[M, N] = w_cm^T[M, K] x_cm[K, N].
  void Gemm(const Tensor& x, const Tensor& w, Tensor& out) override {
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
  void RmsNorm(const Tensor& x, const Tensor& w, float eps, bool unit_offset, Tensor& out) override {
    Prof prof_(this, "rmsnorm");
    const int64_t d = w.numel();
    Check(K::RmsNorm(x.data, x.dtype == DType::kF32, B(w), x.numel() / d, static_cast<int>(d), eps, unit_offset,
                     B(out), stream_),
          "rmsnorm");
  }
  void Add(const Tensor& a, const Tensor& b, Tensor& out) override {
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
  void AddRmsNorm(Tensor& h, const Tensor& mix, const Tensor& w, float eps, bool unit_offset, Tensor& out) override {
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
  void GemmMulti(const Tensor& x, const Tensor& w, const std::vector<Tensor*>& outs) override {
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
  void GemmSwiGlu(const Tensor& x, const Tensor& w, Tensor& out) override {
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
  void SwiGlu(const Tensor& gate, const Tensor& up, Tensor& out) override {
    Prof prof_(this, "swiglu");
    Check(K::SwiGlu(B(gate), B(up), B(out), gate.numel(), stream_), "swiglu");
  }
  void SigmoidMul(const Tensor& x, const Tensor& gate, Tensor& out) override {
    Prof prof_(this, "sigmoid_mul");
    Check(K::SigmoidMul(B(x), B(gate), B(out), x.numel(), stream_), "sigmoid_mul");
  }
  void GatherRows(const Tensor& x, const Tensor& rows, Tensor& out) override {
    Prof prof_(this, "gather_rows");
    Check(K::GatherRows(x.data, rows.ptr<int64_t>(), rows.numel(), x.numel() / x.dim(0),
                        static_cast<int>(DTypeSize(x.dtype)), out.data, stream_),
          "gather");
  }

  void StageBatch(const BatchInfo& b, const std::vector<int32_t>& ids, const std::vector<int64_t>& rows,
                  Tensor* ids_out, Tensor* rows_out) override {
    Stage(b, &ids, &rows);
    const int64_t N = static_cast<int64_t>(ids.size()), R = static_cast<int64_t>(rows.size());
    *ids_out = View(staged_ids_, DType::kI32, {N});
    *rows_out = View(staged_rows_, DType::kI64, {R});
  }

  bool ReplayGraph(const std::string& key, Tensor* out) override {
    if (!graphs_enabled_) return false;
    auto it = graphs_.find(key);
    if (it == graphs_.end()) return false;
    // The output leaves the shared workspace before another graph can overwrite it; allocated
    // first, so a full device fails this before the graph changes any state (and an allocation
    // that had to drop every graph to succeed leaves none to replay).
    Tensor copy;
    if (out != nullptr && it->second.out_data != nullptr) {
      copy = Empty(it->second.out_dtype, it->second.out_shape);
      it = graphs_.find(key);
      if (it == graphs_.end()) return false;
    }
    const Graph& g = it->second;
    Check(cudaGraphLaunch(g.exec, stream_), "graph launch");
    if (copy.defined()) {
      Check(cudaMemcpyAsync(copy.data, g.out_data, copy.nbytes(), cudaMemcpyDeviceToDevice, stream_), "graph output");
      *out = std::move(copy);
    }
    keeper_.Used(key);
    ++replays_;
    return true;
  }
  void ApplyOptions() override {
    const BackendOptions& o = options();
    gdn_fused_ = o.gdn_fused;
    gdn_chunked_ = o.gdn_chunked;
    moe_device_ = o.moe_device;
    // These two are settings of the kernel library, shared by every CUDA backend of the process
    // (one per process in practice); the backend is the only caller.
    K::SetSkinnyWide(o.skinny_wide);
    K::SetProgrammaticLaunch(o.programmatic_launch);
    graphs_enabled_ = o.cuda_graphs && !profiling_;
    keeper_.set_capture_after(std::max(1, o.graph_capture_after));
    if (o.graph_limit < keeper_.limit()) DropGraphs("");  // turned off, graphs are kept but not replayed
    keeper_.set_limit(std::max(0, o.graph_limit));
  }
  bool BeginGraphCapture(const std::string& key) override {
    if (!CapturesGraphs() || failed_keys_.count(key) || !keeper_.ShouldCapture(key)) return false;
    if (cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed) != cudaSuccess) {
      cudaGetLastError();
      NoteCaptureFailure(key);
      return false;
    }
    capturing_ = true;
    return true;
  }
  Status EndGraphCapture(const std::string& key, const Tensor& out) override {
    capturing_ = false;
    cudaGraph_t graph = nullptr;
    const cudaError_t e = cudaStreamEndCapture(stream_, &graph);
    if (e != cudaSuccess || graph == nullptr || !error_.ok()) {
      NoteCaptureFailure(key);
      if (graph) cudaGraphDestroy(graph);
      Status s = error_.ok() ? Internal("graph capture failed: {}", cudaGetErrorString(e)) : error_;
      error_ = Status::Ok();  // nothing of the capture ran: the caller runs the ops instead
      cudaGetLastError();
      return s;
    }
    Graph g;
    // What the executable costs on the device (the driver's own allocations for it): measured
    // around the instantiation, for the memory figures (graph_stats().exec_bytes).
    size_t free0 = 0, free1 = 0, total = 0;
    cudaMemGetInfo(&free0, &total);
    const cudaError_t ie = cudaGraphInstantiate(&g.exec, graph, 0);
    cudaMemGetInfo(&free1, &total);
    g.exec_bytes = free0 > free1 ? static_cast<int64_t>(free0 - free1) : 0;
    cudaGraphDestroy(graph);
    if (ie != cudaSuccess) {
      cudaGetLastError();
      NoteCaptureFailure(key);
      return Internal("graph instantiation failed: {}", cudaGetErrorString(ie));
    }
    exec_bytes_ += g.exec_bytes;
    g.out_data = out.data;
    g.out_dtype = out.dtype;
    g.out_shape = out.shape;
    auto old = graphs_.find(key);
    if (old != graphs_.end()) DestroyGraph(old);
    graphs_[key] = std::move(g);
    ++captures_;
    const std::vector<std::string> drop = keeper_.Added(key);
    if (!drop.empty()) cudaStreamSynchronize(stream_);  // a dropped graph may still be running
    for (const auto& k : drop) {
      auto it = graphs_.find(k);
      if (it != graphs_.end()) DestroyGraph(it);
      ++evictions_;
    }
    return Status::Ok();
  }
  void AbortGraphCapture() override {
    if (!capturing_) return;
    capturing_ = false;
    cudaGraph_t graph = nullptr;
    cudaStreamEndCapture(stream_, &graph);
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    error_ = Status::Ok();  // what the aborted capture recorded never ran
    ++capture_failures_;
  }
  void DropGraphs(const std::string& needle) override {
    bool synced = false;
    for (auto it = graphs_.begin(); it != graphs_.end();) {
      if (it->first.find(needle) == std::string::npos) {
        ++it;
        continue;
      }
      if (!synced) {
        cudaStreamSynchronize(stream_);
        synced = true;
      }
      it = DestroyGraph(it);
    }
  }
  bool CapturesGraphs() const override { return graphs_enabled_ && !profiling_ && keeper_.limit() > 0; }
  GraphStats graph_stats() const override {
    GraphStats st;
    st.graphs = static_cast<int64_t>(graphs_.size());
    st.limit = keeper_.limit();
    {
      std::lock_guard<std::mutex> g(arena_->mu);
      st.workspace_bytes = static_cast<int64_t>(arena_->arena.reserved_bytes());
    }
    st.exec_bytes = exec_bytes_;
    st.pool_cached_bytes = static_cast<int64_t>(pool_->cached_bytes());
    st.captures = captures_;
    st.replays = replays_;
    st.evictions = evictions_;
    st.capture_failures = capture_failures_;
    return st;
  }
  int64_t device_memory_used() const override {
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) {
      cudaGetLastError();
      return -1;
    }
    return static_cast<int64_t>(total - free);
  }
  void ReleaseCachedMemory() override {
    if (capturing_) return;
    DropGraphs("");
    cudaStreamSynchronize(stream_);
    {
      std::lock_guard<std::mutex> g(arena_->mu);
      arena_->arena.ReleaseUnused();
    }
    pool_->Trim();
  }
  void SetProfiling(bool on) override {
    profiling_ = on;
    graphs_enabled_ = options().cuda_graphs && !on;  // profiling times ops one by one
  }
  std::string ProfileReport() override {
    cudaStreamSynchronize(stream_);
    std::map<std::string, std::pair<double, int>> agg;
    double total = 0;
    for (auto& e : prof_events_) {
      float ms = 0;
      cudaEventElapsedTime(&ms, e.e0, e.e1);
      agg[e.name].first += ms;
      agg[e.name].second += 1;
      total += ms;
      cudaEventDestroy(e.e0);
      cudaEventDestroy(e.e1);
    }
    prof_events_.clear();
    std::vector<std::pair<std::string, std::pair<double, int>>> v(agg.begin(), agg.end());
    std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
    std::string r = fmt::format("| op | ms | calls | share |\n|---|---|---|---|\n");
    for (auto& [n, t] : v) r += fmt::format("| {} | {:.3f} | {} | {:.1f}% |\n", n, t.first, t.second, 100 * t.first / total);
    return r + fmt::format("| total (device time of ops) | {:.3f} | | |\n", total);
  }

  // ---- attention ----
  void SplitQueryGate(const Tensor& q2, int num_heads, int head_dim, Tensor& q, Tensor& gate) override {
    Prof prof_(this, "split_q_gate");
    Check(K::SplitQueryGate(B(q2), q2.dim(0), num_heads, head_dim, B(q), B(gate), stream_), "split_q_gate");
  }
  void QkNormRope(const Tensor& q2, Tensor& k, const Tensor& q_norm, const Tensor& k_norm, float eps,
                  const AttnDims& d, const BatchInfo& b, Tensor& q, Tensor& gate) override {
    Prof prof_(this, "q/k norm + rope");
    const Meta& m = UploadMeta(b);
    Check(K::QkNormRope(B(q2), B(k), B(q_norm), B(k_norm), m.tok_pos, b.num_tokens, d.num_q_heads, d.num_kv_heads,
                        d.head_dim, d.rotary_dim, d.rope_theta, eps, B(q), B(gate), stream_),
          "qk_norm_rope");
  }
  void Rope(Tensor& x, int num_heads, const AttnDims& d, const BatchInfo& b) override {
    Prof prof_(this, "rope");
    const Meta& m = UploadMeta(b);
    Check(K::Rope(B(x), m.tok_pos, b.num_tokens, num_heads, d.head_dim, d.rotary_dim, d.rope_theta, stream_), "rope");
  }
  void StageBlockTable(const std::vector<int32_t>& table, Tensor& dst) override {
    const size_t bytes = table.size() * sizeof(int32_t);
    if (dst.dtype != DType::kI32 || static_cast<int64_t>(table.size()) != dst.numel()) {
      Fail(fmt::format("StageBlockTable: {} entries into a {} {} tensor", table.size(), DTypeName(dst.dtype),
                       dst.ShapeString()));
      return;
    }
    Check(table_stager_.Copy(table.data(), bytes, dst.data, stream_), "block table");
  }
  void Attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttnDims& d, AttnLayerState& st,
                 const BatchInfo& b, Tensor& out) override {
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

  // ---- GDN ----
  void CausalConvSilu(const Tensor& p, const Tensor& w, const GdnDims& d, GdnLayerState& st, const BatchInfo& b,
                      Tensor& y) override {
    Prof prof_(this, "gdn conv + state");
    const Meta& m = UploadMeta(b);
    const int64_t C = d.conv_dim();
    Check(K::CausalConvSilu(B(p), B(w), B(st.conv), m.seqs, m.tok_seq, b.num_tokens, C, d.conv_kernel, B(y), stream_),
          "conv");
    Check(K::ConvStateUpdate(B(p), m.seqs, static_cast<int>(b.seqs.size()), C, d.conv_kernel, B(st.conv),
                             st.log_raw.dim(1), B(st.log_raw), stream_),
          "conv_state");
  }
  void GatedDeltaRule(const Tensor& y, const Tensor& braw, const Tensor& araw, const Tensor& a_log,
                      const Tensor& dt_bias, const GdnDims& d, GdnLayerState& st, const BatchInfo& b,
                      Tensor& o) override {
    Prof prof_(this, "gdn rule (prep, log, recurrence)");
    const Meta& m = UploadMeta(b);
    const int64_t N = b.num_tokens;
    const int hk = d.num_k_heads, hv = d.num_v_heads, dk = d.head_k, dv = d.head_v;
    if (gdn_fused_ && b.max_len <= K::kGdnFusedMaxLen) {
      // Decode / verify / draft steps: prep, log and recurrence in one kernel.
      Check(K::GdnFusedStep(B(y), B(braw), B(araw), a_log.ptr<float>(), dt_bias.ptr<float>(), m.seqs,
                            static_cast<int>(b.seqs.size()), static_cast<int>(b.max_len), hk, hv, dk, dv,
                            st.rec.ptr<float>(), B(o), st.log_k.dim(1), st.log_k.ptr<float>(), st.log_v.ptr<float>(),
                            st.log_g.ptr<float>(), st.log_beta.ptr<float>(), stream_),
            "gdn_fused_step");
      return;
    }
    Tensor q = Empty(DType::kF32, {N, hk, dk}), k = Empty(DType::kF32, {N, hk, dk});
    Tensor v = Empty(DType::kF32, {N, hv, dv}), g = Empty(DType::kF32, {N, hv}), beta = Empty(DType::kF32, {N, hv});
    Check(K::GdnPrep(B(y), B(braw), B(araw), a_log.ptr<float>(), dt_bias.ptr<float>(), N, hk, hv, dk, dv,
                     q.ptr<float>(), k.ptr<float>(), v.ptr<float>(), g.ptr<float>(), beta.ptr<float>(), stream_),
          "gdn_prep");
    Check(K::GdnLogWrite(k.ptr<float>(), v.ptr<float>(), g.ptr<float>(), beta.ptr<float>(), m.seqs,
                         static_cast<int>(b.seqs.size()), static_cast<int>(b.max_len), hk, hv, dk, dv,
                         st.log_k.dim(1), st.log_k.ptr<float>(), st.log_v.ptr<float>(), st.log_g.ptr<float>(),
                         st.log_beta.ptr<float>(), stream_),
          "gdn_log");
    // Long update spans (prefill) take the chunked form; the recurrent kernel skips exactly those
    // (the same predicate on the device), and runs every other span of the batch.
    const int chunk_min = gdn_chunked_ && K::GdnChunkSupports(hk, hv, dk, dv) ? K::kGdnChunkMinLen : 0;
    Check(K::GdnRecurrent(q.ptr<float>(), k.ptr<float>(), v.ptr<float>(), g.ptr<float>(), beta.ptr<float>(), m.seqs,
                          static_cast<int>(b.seqs.size()), hk, hv, dk, dv, st.rec.ptr<float>(), B(o), chunk_min,
                          stream_),
          "gdn_recurrent");
    int64_t longest = 0;
    for (const auto& s : b.seqs) {
      if (K::GdnSpanChunked(static_cast<int>(s.mode), s.len, chunk_min)) longest = std::max(longest, s.len);
    }
    if (longest == 0) return;
    // One scratch serves every chunked span: their launches are ordered on the stream.
    Tensor scratch = Empty(DType::kF32, {K::GdnChunkScratchFloats(longest, hv, dk, dv)});
    for (const auto& s : b.seqs) {
      if (!K::GdnSpanChunked(static_cast<int>(s.mode), s.len, chunk_min)) continue;
      Check(K::GdnChunked(q.ptr<float>(), k.ptr<float>(), v.ptr<float>(), g.ptr<float>(), beta.ptr<float>(), s.offset,
                          s.len, hk, hv, dk, dv, st.rec.ptr<float>() + int64_t{s.slot} * hv * dk * dv,
                          scratch.ptr<float>(), B(o), stream_),
            "gdn_chunked");
    }
  }
  void GatedRmsNorm(const Tensor& o, const Tensor& z, const Tensor& w, float eps, Tensor& out) override {
    Prof prof_(this, "gated_rmsnorm");
    const int64_t d = w.numel();
    Check(K::GatedRmsNorm(B(o), B(z), B(w), o.numel() / d, static_cast<int>(d), eps, B(out), stream_), "gated_norm");
  }
  void GdnCommit(GdnLayerState& st, const GdnDims& d, int slot, int keep, bool from_checkpoint) override {
    std::vector<GdnLayerState*> one{&st};
    CommitLayers(one, d, slot, keep, from_checkpoint);
  }
  void GdnCommitLayers(std::vector<GdnLayerState>& layers, const GdnDims& d, int slot, int keep,
                       bool from_checkpoint) override {
    std::vector<GdnLayerState*> all;
    for (auto& l : layers) all.push_back(&l);
    for (size_t i = 0; i < all.size(); i += K::kGdnCommitMaxLayers) {
      std::vector<GdnLayerState*> part(all.begin() + i,
                                       all.begin() + std::min(all.size(), i + K::kGdnCommitMaxLayers));
      CommitLayers(part, d, slot, keep, from_checkpoint);
    }
  }
  // Every layer's window and state of the slot in two launches (not two to four per layer).
  void CommitLayers(const std::vector<GdnLayerState*>& layers, const GdnDims& d, int slot, int keep,
                    bool from_checkpoint) {
    Prof prof_(this, "gdn commit (replay)");
    if (layers.empty()) return;
    K::GdnCommitTable tab;
    tab.layers = static_cast<int>(layers.size());
    tab.log_cap = layers[0]->log_k.dim(1);
    for (size_t i = 0; i < layers.size(); ++i) {
      GdnLayerState& st = *layers[i];
      if (from_checkpoint && (!st.ckpt_conv.defined() || !st.ckpt_rec.defined())) {
        Fail("GdnCommit from a checkpoint, but the cache keeps none");
        return;
      }
      tab.layer[i] = K::GdnCommitLayer{B(st.conv),           st.ckpt_conv.defined() ? B(st.ckpt_conv) : nullptr,
                                       B(st.log_raw),        st.rec.ptr<float>(),
                                       st.ckpt_rec.ptr<float>(), st.log_k.ptr<float>(),
                                       st.log_v.ptr<float>(), st.log_g.ptr<float>(),
                                       st.log_beta.ptr<float>()};
    }
    Check(K::ConvReplayLayers(tab, slot, keep, from_checkpoint, d.conv_dim(), d.conv_kernel, stream_), "conv_replay");
    Check(K::GdnReplayLayers(tab, slot, keep, from_checkpoint, d.num_k_heads, d.num_v_heads, d.head_k, d.head_v,
                             stream_),
          "gdn_replay");
  }
  void GdnCheckpoint(GdnLayerState& st, int slot) override {
    const size_t cw = st.conv.nbytes() / st.conv.dim(0), rw = st.rec.nbytes() / st.rec.dim(0);
    Check(cudaMemcpyAsync(static_cast<char*>(st.ckpt_conv.data) + slot * cw, static_cast<char*>(st.conv.data) + slot * cw,
                          cw, cudaMemcpyDeviceToDevice, stream_),
          "ckpt conv");
    Check(cudaMemcpyAsync(static_cast<char*>(st.ckpt_rec.data) + slot * rw, static_cast<char*>(st.rec.data) + slot * rw,
                          rw, cudaMemcpyDeviceToDevice, stream_),
          "ckpt state");
  }
  void GdnReset(GdnLayerState& st, int slot) override {
    const size_t cw = st.conv.nbytes() / st.conv.dim(0), rw = st.rec.nbytes() / st.rec.dim(0);
    Check(cudaMemsetAsync(static_cast<char*>(st.conv.data) + slot * cw, 0, cw, stream_), "reset conv");
    Check(cudaMemsetAsync(static_cast<char*>(st.rec.data) + slot * rw, 0, rw, stream_), "reset state");
  }

  // ---- token choice ----
  void ArgmaxRows(const Tensor& logits, Tensor& ids) override {
    Prof prof_(this, "argmax rows");
    if (logits.dtype != DType::kF32 || logits.rank() != 2 || ids.dtype != DType::kI32 ||
        ids.numel() != logits.dim(0)) {
      Fail(fmt::format("ArgmaxRows: logits {} must be F32 [R, V] and ids {} I32 [R]", logits.ShapeString(),
                       ids.ShapeString()));
      return;
    }
    const int64_t R = logits.dim(0), V = logits.dim(1);
    if (R == 0) return;
    Tensor scratch = Empty(DType::kI64, {R * std::max(K::ArgmaxSplits(R, V), 1)});
    Check(K::ArgmaxRows(logits.ptr<float>(), R, V, static_cast<uint64_t*>(scratch.data), ids.ptr<int32_t>(),
                        stream_),
          "argmax rows");
  }
  void MaskIds(Tensor& logits, const Tensor& ban) override {
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
  std::vector<int32_t> DownloadI32(const Tensor& t) override {
    if (t.dtype != DType::kI32) throw std::invalid_argument("DownloadI32 of a non-I32 tensor");
    std::vector<int32_t> out(static_cast<size_t>(t.numel()));
    if (out.empty()) return out;
    Check(cudaMemcpyAsync(out.data(), t.data, t.nbytes(), cudaMemcpyDeviceToHost, stream_), "download i32");
    Check(cudaStreamSynchronize(stream_), "download i32 sync");
    return out;
  }

  void ChooseTokens(Tensor& logits, const std::vector<TokenRowSpec>& rows, const Tensor& q, Tensor& out) override {
    Prof prof_(this, "choose tokens");
    const bool q_ok = !q.defined() || (q.dtype == DType::kF32 && q.rank() == 2 && logits.rank() == 2 &&
                                       q.dim(1) == logits.dim(1));
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
      kr[r] = K::TokenRow{t.temperature, t.top_k, t.top_p, t.min_p, t.seed, t.position, t.coupled ? 1 : 0,
                          t.draft, t.index, t.stream, t.q_row, 0};
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

  // ---- MoE: routing, grouping and experts on the device up to kMoeDeviceMaxRows rows (nothing
  // waits for the host, so the forward can be captured); past that, per-expert row lists on the
  // host and cuBLAS GEMMs ----
  bool MoeFfnCapturable(int64_t rows, int64_t hidden, int64_t inter, int experts, int top_k) const override {
    return moe_device_ && moe_record_ == nullptr && K::MoeDeviceApplies(rows, hidden, inter, experts, top_k);
  }
  void MoeFfn(const Tensor& m, const MoeTensors& w, Tensor& out) override {
    const int64_t N = m.dim(0), H = m.dim(1), E = w.router.dim(0), Ie = w.down.dim(2);
    const int k = w.top_k;
    if (N == 0) return;
    // Router logits in fp32 straight out of the GEMM: a bf16 rounding here can flip a near-tie
    // in the top-k and send a token to another expert.
    Tensor logits = Empty(DType::kF32, {N, E});
    Gemm(m, w.router, logits);
    Tensor ids = Empty(DType::kI32, {N, k}), wts = Empty(DType::kF32, {N, k});
    Check(K::RouterTopK(logits.ptr<float>(), N, static_cast<int>(E), k, ids.ptr<int32_t>(), wts.ptr<float>(), stream_), "router");
    Tensor sd, gl;
    if (w.shared_gate.defined()) SharedExpert(m, w, &sd, &gl);
    const bf16* shared = sd.defined() ? B(sd) : nullptr;
    const bf16* gate = gl.defined() ? B(gl) : nullptr;
    const bool aligned = Aligned16(m.data) && Aligned16(w.gate_up.data) && Aligned16(w.down.data);
    if (moe_device_ && aligned && K::MoeDeviceApplies(N, H, Ie, static_cast<int>(E), k)) {
      Prof prof_(this, "moe routed (device)");
      // Test hook only: the download waits for the device, so the model captures no graph while it is set.
      if (moe_record_ != nullptr) moe_record_->push_back(DownloadI32(ids));
      Tensor scratch = Empty(DType::kI32, {K::MoeScratchInts(N, k, static_cast<int>(E))});
      Tensor act = Empty(DType::kBF16, {N * k, Ie}), y = Empty(DType::kBF16, {N * k, H});
      const int32_t* sp = scratch.ptr<int32_t>();
      Check(K::MoeGroup(ids.ptr<int32_t>(), N, k, static_cast<int>(E), scratch.ptr<int32_t>(), stream_), "moe group");
      Check(K::MoeExperts(B(m), B(w.gate_up), B(w.down), sp, N, k, static_cast<int>(E), H, Ie, B(act), B(y), stream_),
            "moe experts");
      Check(K::MoeCombine(ids.ptr<int32_t>(), wts.ptr<float>(), sp, B(y), shared, gate, N, k, static_cast<int>(E), H,
                          B(out), stream_),
            "moe combine");
      return;
    }
    if (capturing_) {
      Fail(fmt::format("MoeFfn of {} rows routes on the host and cannot be captured in a graph", N));
      return;
    }
    Tensor acc = Alloc(DType::kF32, {N, H});
    MoeRoutedHost(m, w, ids, wts, acc);
    Check(K::MoeFinish(acc.ptr<float>(), shared, gate, N, H, B(out), stream_), "moe finish");
  }

 private:
  static bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

  // sd = the shared expert's output, gl = its gate logit (MoeFinish applies the sigmoid gate).
  void SharedExpert(const Tensor& m, const MoeTensors& w, Tensor* sd, Tensor* gl) {
    const int64_t N = m.dim(0), H = m.dim(1), Is = w.shared_gate.dim(0);
    Tensor sg = Empty(DType::kBF16, {N, Is});
    Tensor su = w.shared_gate_up.defined() ? Tensor{} : Empty(DType::kBF16, {N, Is});
    *sd = Empty(DType::kBF16, {N, H});
    *gl = Empty(DType::kBF16, {N, 1});
    if (w.shared_gate_up.defined()) {
      GemmSwiGlu(m, w.shared_gate_up, sg);
    } else {
      Gemm(m, w.shared_gate, sg);
      Gemm(m, w.shared_up, su);
      SwiGlu(sg, su, sg);
    }
    Gemm(sg, w.shared_down, *sd);
    Gemm(m, w.shared_router, *gl);
  }

  // Prefill (past kMoeDeviceMaxRows rows): routing on the host, per-expert cuBLAS GEMMs over its
  // gathered rows, acc[t] += w * y with experts in ascending id.
  void MoeRoutedHost(const Tensor& m, const MoeTensors& w, const Tensor& ids, const Tensor& wts, Tensor& acc) {
    const int64_t N = m.dim(0), H = m.dim(1), E = w.router.dim(0), Ie = w.down.dim(2);
    const int k = w.top_k;
    std::vector<int32_t> hid(static_cast<size_t>(N * k));
    std::vector<float> hw(static_cast<size_t>(N * k));
    Check(cudaMemcpyAsync(hid.data(), ids.data, ids.nbytes(), cudaMemcpyDeviceToHost, stream_), "router ids");
    Check(cudaMemcpyAsync(hw.data(), wts.data, wts.nbytes(), cudaMemcpyDeviceToHost, stream_), "router weights");
    Check(cudaStreamSynchronize(stream_), "router sync");
    if (moe_record_ != nullptr) moe_record_->push_back(hid);
    std::vector<std::vector<int32_t>> rows(E);
    std::vector<std::vector<float>> rw(E);
    for (int64_t t = 0; t < N; ++t) {
      for (int r = 0; r < k; ++r) {
        const int32_t e = hid[t * k + r];
        if (e < 0 || e >= E) continue;
        rows[e].push_back(static_cast<int32_t>(t));
        rw[e].push_back(hw[t * k + r]);
      }
    }
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = static_cast<int64_t>(rows[e].size());
      if (n == 0) continue;
      Tensor r32 = Alloc(DType::kI32, {n}), rws = Alloc(DType::kF32, {n});
      std::vector<int64_t> r64(rows[e].begin(), rows[e].end());
      Check(cudaMemcpyAsync(r32.data, rows[e].data(), n * 4, cudaMemcpyHostToDevice, stream_), "expert rows");
      Check(cudaMemcpyAsync(rws.data, rw[e].data(), n * 4, cudaMemcpyHostToDevice, stream_), "expert weights");
      Tensor xin = Alloc(DType::kBF16, {n, H});
      Tensor rdev = Alloc(DType::kI64, {n});
      Check(cudaMemcpyAsync(rdev.data, r64.data(), n * 8, cudaMemcpyHostToDevice, stream_), "expert rows");
      GatherRows(m, rdev, xin);
      const Tensor gw = w.gate_up.Slice(e * 2 * Ie * H, {Ie, H});
      const Tensor uw = w.gate_up.Slice(e * 2 * Ie * H + Ie * H, {Ie, H});
      const Tensor dw = w.down.Slice(e * H * Ie, {H, Ie});
      Tensor g = Alloc(DType::kBF16, {n, Ie}), u = Alloc(DType::kBF16, {n, Ie}), y = Alloc(DType::kBF16, {n, H});
      Gemm(xin, gw, g);
      Gemm(xin, uw, u);
      SwiGlu(g, u, g);
      Gemm(g, dw, y);
      Check(K::ScaledRowAdd(B(y), r32.ptr<int32_t>(), rws.ptr<float>(), n, H, acc.ptr<float>(), stream_), "expert add");
      Check(cudaStreamSynchronize(stream_), "expert sync");  // host row lists are reused next expert
    }
  }

  struct Meta {
    int32_t* tok_slot = nullptr;
    int32_t* tok_pos = nullptr;
    int32_t* tok_seq = nullptr;
    K::SeqMeta* seqs = nullptr;
  };

  static bf16* B(const Tensor& t) { return static_cast<bf16*>(t.data); }

  void Check(cudaError_t e, const char* what) {
    if (e != cudaSuccess && error_.ok()) {
      error_ = Internal("cuda {}: {}", what, cudaGetErrorString(e));
    }
  }
  void Fail(std::string msg) {
    if (error_.ok()) error_ = Internal("{}", msg);
  }

  static Tensor View(void* p, DType dt, std::vector<int64_t> shape) {
    Tensor t;
    t.dtype = dt;
    t.shape = std::move(shape);
    t.device = Device::kCuda;
    t.data = p;
    return t;
  }

  // The batch layout the ops read: per token (slot, position, span index), per span a SeqMeta.
  // Host-side values are compared with what is staged, so ops called outside a forward (tests)
  // stage their own layout, and a forward's ops all find theirs staged by StageBatch.
  std::vector<int32_t> HostMeta(const BatchInfo& b) const {
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

  const Meta& UploadMeta(const BatchInfo& b) {
    std::vector<int32_t> host = HostMeta(b);
    if (host != last_meta_) Stage(b, nullptr, nullptr);
    return meta_;
  }

  // Copies layout (+ ids and rows when given) through pinned memory into fixed device buffers.
  // The addresses stay put while capacity suffices, so captured graphs keep reading them; when a
  // batch needs more, the buffers grow and every graph is dropped.
  void Stage(const BatchInfo& b, const std::vector<int32_t>* ids, const std::vector<int64_t>* rows) {
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
      staged_bytes_ = static_cast<size_t>(cap_tokens_) * (3 * 4 + 4 + 8) + static_cast<size_t>(cap_seqs_) * sizeof(K::SeqMeta);
      if (cudaMalloc(&staged_base_, staged_bytes_) != cudaSuccess) throw std::bad_alloc();
      if (cudaMallocHost(&pinned_, staged_bytes_) != cudaSuccess) throw std::bad_alloc();
      char* d = static_cast<char*>(staged_base_);
      staged_rows_ = d;                                   // I64 first: 8-byte aligned
      staged_seqs_ = d + cap_tokens_ * 8;                  // SeqMeta: 4-byte fields
      staged_tok_ = staged_seqs_ + cap_seqs_ * sizeof(K::SeqMeta);
      staged_ids_ = staged_tok_ + cap_tokens_ * 12;
    }
    // The previous forward's copy out of the pinned buffer must be done before it is rewritten.
    cudaEventSynchronize(staged_);
    char* h = static_cast<char*>(pinned_);
    const size_t off_seqs = static_cast<size_t>(cap_tokens_) * 8;
    const size_t off_tok = off_seqs + static_cast<size_t>(cap_seqs_) * sizeof(K::SeqMeta);
    const size_t off_ids = off_tok + static_cast<size_t>(cap_tokens_) * 12;
    if (rows) std::memcpy(h, rows->data(), R * 8);
    std::memcpy(h + off_seqs, host.data() + 3 * N, S * sizeof(K::SeqMeta));
    // Token arrays at fixed offsets (slot | pos | seq), each cap_tokens_ long.
    std::memcpy(h + off_tok, host.data(), N * 4);
    std::memcpy(h + off_tok + cap_tokens_ * 4, host.data() + N, N * 4);
    std::memcpy(h + off_tok + cap_tokens_ * 8, host.data() + 2 * N, N * 4);
    if (ids) std::memcpy(h + off_ids, ids->data(), ids->size() * 4);
    // One copy covers all of it (the unused tails are cheap at these sizes).
    const size_t used = ids ? off_ids + ids->size() * 4 : off_tok + static_cast<size_t>(cap_tokens_) * 12;
    Check(cudaMemcpyAsync(staged_base_, pinned_, used, cudaMemcpyHostToDevice, stream_), "stage");
    Check(cudaEventRecord(staged_, stream_), "stage event");
    meta_.tok_slot = reinterpret_cast<int32_t*>(staged_tok_);
    meta_.tok_pos = meta_.tok_slot + cap_tokens_;
    meta_.tok_seq = meta_.tok_slot + 2 * cap_tokens_;
    meta_.seqs = reinterpret_cast<K::SeqMeta*>(staged_seqs_);
    last_meta_ = std::move(host);
  }

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

  // A kept graph; its output lives in the shared workspace (ReplayGraph copies it out).
  struct Graph {
    cudaGraphExec_t exec = nullptr;
    void* out_data = nullptr;
    DType out_dtype = DType::kF32;
    std::vector<int64_t> out_shape;
    int64_t exec_bytes = 0;
  };
  std::map<std::string, Graph>::iterator DestroyGraph(std::map<std::string, Graph>::iterator it) {
    cudaGraphExecDestroy(it->second.exec);
    exec_bytes_ -= it->second.exec_bytes;
    keeper_.Removed(it->first);
    return graphs_.erase(it);
  }
  // A key whose capture failed is not tried again (bounded: a long-running server forgets).
  void NoteCaptureFailure(const std::string& key) {
    ++capture_failures_;
    if (failed_keys_.size() > 1024) failed_keys_.clear();
    failed_keys_.insert(key);
  }
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
  int64_t cap_tokens_ = 0, cap_seqs_ = 0;
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

}  // namespace

int CudaDeviceCountImpl() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

StatusOr<std::unique_ptr<Backend>> MakeCudaBackend() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    return Status(StatusCode::kUnavailable,
                  fmt::format("no CUDA device available ({})", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices"));
  }
  return std::unique_ptr<Backend>(new CudaBackend());
}

}  // namespace specd

#endif  // SPECD_HAVE_CUDA
