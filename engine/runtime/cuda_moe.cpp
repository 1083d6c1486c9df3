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

void CudaBackend::MoeFfn(const Tensor& m, const MoeTensors& w, Tensor& out) {
  const int64_t N = m.dim(0), H = m.dim(1), E = w.router.dim(0), Ie = w.down.dim(2);
  const int k = w.top_k;
  if (N == 0) return;
  // Router logits in fp32 straight out of the GEMM: a bf16 rounding here can flip a near-tie
  // in the top-k and send a token to another expert.
  Tensor logits = Empty(DType::kF32, {N, E});
  Gemm(m, w.router, logits);
  Tensor ids = Empty(DType::kI32, {N, k}), wts = Empty(DType::kF32, {N, k});
  Check(K::RouterTopK(logits.ptr<float>(), N, static_cast<int>(E), k, ids.ptr<int32_t>(), wts.ptr<float>(), stream_),
        "router");
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

void CudaBackend::SharedExpert(const Tensor& m, const MoeTensors& w, Tensor* sd, Tensor* gl) {
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

void CudaBackend::MoeRoutedHost(const Tensor& m, const MoeTensors& w, const Tensor& ids, const Tensor& wts,
                                Tensor& acc) {
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

}  // namespace specd::cuda_detail

#endif  // SPECD_HAVE_CUDA
