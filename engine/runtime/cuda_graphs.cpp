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

bool CudaBackend::ReplayGraphOutputs(const std::string& key, std::vector<Tensor>* outs) {
  if (!graphs_enabled_) return false;
  auto it = graphs_.find(key);
  if (it == graphs_.end()) return false;
  // The outputs leave the shared workspace before another graph can overwrite them; allocated
  // first, so a full device fails this before the graph changes any state (and an allocation
  // that had to drop every graph to succeed leaves none to replay).
  std::vector<Tensor> copies;
  if (outs != nullptr) {
    const std::vector<GraphOutput> specs = it->second.outs;
    for (const GraphOutput& o : specs) copies.push_back(o.data != nullptr ? Empty(o.dtype, o.shape) : Tensor{});
    it = graphs_.find(key);
    if (it == graphs_.end()) return false;
  }
  const Graph& g = it->second;
  Check(cudaGraphLaunch(g.exec, stream_), "graph launch");
  for (size_t i = 0; i < copies.size(); ++i) {
    if (!copies[i].defined()) continue;  // a capture that named no output there
    Check(cudaMemcpyAsync(copies[i].data, g.outs[i].data, copies[i].nbytes(), cudaMemcpyDeviceToDevice, stream_),
          "graph output");
  }
  if (outs != nullptr) *outs = std::move(copies);
  keeper_.Used(key);
  ++replays_;
  return true;
}

void CudaBackend::ApplyOptions() {
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

bool CudaBackend::BeginGraphCapture(const std::string& key) {
  if (!CapturesGraphs() || failed_keys_.count(key) || !keeper_.ShouldCapture(key)) return false;
  if (cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed) != cudaSuccess) {
    cudaGetLastError();
    NoteCaptureFailure(key);
    return false;
  }
  capturing_ = true;
  return true;
}

Status CudaBackend::EndGraphCaptureOutputs(const std::string& key, const std::vector<Tensor>& outs) {
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
  for (const Tensor& o : outs) g.outs.push_back(GraphOutput{o.data, o.dtype, o.shape});
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

void CudaBackend::AbortGraphCapture() {
  if (!capturing_) return;
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  cudaStreamEndCapture(stream_, &graph);
  if (graph) cudaGraphDestroy(graph);
  cudaGetLastError();
  error_ = Status::Ok();  // what the aborted capture recorded never ran
  ++capture_failures_;
}

void CudaBackend::DropGraphs(const std::string& needle) {
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

auto CudaBackend::graph_stats() const -> GraphStats {
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

int64_t CudaBackend::device_memory_used() const {
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return static_cast<int64_t>(total - free);
}

int64_t CudaBackend::device_memory_total() const {
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return static_cast<int64_t>(total);
}

void CudaBackend::ReleaseCachedMemory() {
  if (capturing_) return;
  DropGraphs("");
  cudaStreamSynchronize(stream_);
  {
    std::lock_guard<std::mutex> g(arena_->mu);
    arena_->arena.ReleaseUnused();
  }
  pool_->Trim();
}

void CudaBackend::SetProfiling(bool on) {
  profiling_ = on;
  graphs_enabled_ = options().cuda_graphs && !on;  // profiling times ops one by one
}

std::string CudaBackend::ProfileReport() {
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
  for (auto& [n, t] : v)
    r += fmt::format("| {} | {:.3f} | {} | {:.1f}% |\n", n, t.first, t.second, 100 * t.first / total);
  return r + fmt::format("| total (device time of ops) | {:.3f} | | |\n", total);
}

auto CudaBackend::DestroyGraph(std::map<std::string, Graph>::iterator it) -> std::map<std::string, Graph>::iterator {
  cudaGraphExecDestroy(it->second.exec);
  exec_bytes_ -= it->second.exec_bytes;
  keeper_.Removed(it->first);
  return graphs_.erase(it);
}

void CudaBackend::NoteCaptureFailure(const std::string& key) {
  ++capture_failures_;
  if (failed_keys_.size() > 1024) failed_keys_.clear();
  failed_keys_.insert(key);
}

}  // namespace specd::cuda_detail

#endif  // SPECD_HAVE_CUDA
