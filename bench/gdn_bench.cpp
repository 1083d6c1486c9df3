// Gated DeltaNet rule on the GPU at Qwen3.5-9B heads (Hk 16, Hv 32, dk = dv = 128), batch 1:
//  (a) prefill: Backend::GatedDeltaRule over one T-token update span from a populated state
//      (T = 512, the server's prefill chunk, and 8192), chunked vs token by token
//      (BackendOptions::gdn_chunked off), median ms per call;
//  (b) decode / verify: the op's kernels (prep + log + recurrence, and the recurrence alone) at
//      T = 9 (kLog) and T = 1 (kUpdate), per layer in µs: a CUDA graph of 50 calls, median over
//      replays divided by 50, so launch gaps do not count.
// SPECD_GDN_DUMP=<file> writes the 8192-token case's inputs (the prep's fp32 q, k, v, g, beta),
// initial state, and this op's o and final state, for bench/fla_gdn.py to run FLA on identically.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>
#include <tuple>
#include <vector>

#include "bench_util.h"
#include "runtime/backend.h"
#include "specd/kernels.h"

using namespace specd;
namespace K = specd::kernels;
using specd::bench::Median;
using specd::bench::Now;

namespace {

constexpr int kHk = 16, kHv = 32, kDk = 128, kDv = 128, kConvK = 4;

void Die(const char* what, cudaError_t e) {
  if (e == cudaSuccess) return;
  std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
  std::exit(1);
}

struct Inputs {
  Tensor y, braw, araw, a_log, dt_bias, o;
  GdnLayerState st;
};

// The same values on every backend: Random is a counter hash of (seed, index).
Inputs MakeInputs(Backend& be, int64_t T) {
  const GdnDims d{kHk, kHv, kDk, kDv, kConvK};
  Inputs in;
  in.y = be.Random(DType::kBF16, {T, d.conv_dim()}, 1.f, 0.f, 11);
  in.braw = be.Random(DType::kBF16, {T, kHv}, 1.f, 0.f, 12);
  in.araw = be.Random(DType::kBF16, {T, kHv}, 1.f, 0.f, 13);
  in.a_log = be.Random(DType::kF32, {kHv}, 0.5f, -1.f, 14);
  in.dt_bias = be.Random(DType::kF32, {kHv}, 0.5f, 0.f, 15);
  in.o = be.Alloc(DType::kBF16, {T, int64_t{kHv} * kDv});
  // A populated state (slot 0), and a one-entry log: update spans write none of it.
  in.st.rec = be.Random(DType::kF32, {1, kHv, kDk, kDv}, 0.05f, 0.f, 16);
  in.st.log_k = be.Alloc(DType::kF32, {1, 1, kHk, kDk});
  in.st.log_v = be.Alloc(DType::kF32, {1, 1, kHv, kDv});
  in.st.log_g = be.Alloc(DType::kF32, {1, 1, kHv});
  in.st.log_beta = be.Alloc(DType::kF32, {1, 1, kHv});
  return in;
}

BatchInfo Span(int64_t T, StateMode mode) {
  BatchInfo b;
  b.seqs = {SeqSpan{0, 0, T, 0, mode, 0, true}};
  b.num_tokens = T;
  b.max_len = T;
  return b;
}

double PrefillMs(Backend& be, int64_t T, int reps) {
  const GdnDims d{kHk, kHv, kDk, kDv, kConvK};
  Inputs in = MakeInputs(be, T);
  const BatchInfo b = Span(T, StateMode::kUpdate);
  for (int i = 0; i < 2; ++i) be.GatedDeltaRule(in.y, in.braw, in.araw, in.a_log, in.dt_bias, d, in.st, b, in.o);
  be.Synchronize();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const double t0 = Now();
    be.GatedDeltaRule(in.y, in.braw, in.araw, in.a_log, in.dt_bias, d, in.st, b, in.o);
    be.Synchronize();
    t.push_back((Now() - t0) * 1e3);
  }
  const Status s = be.TakeError();
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.message().c_str());
    std::exit(1);
  }
  return Median(t);
}

void WriteDump(Backend& be, const char* path, int64_t T) {
  const GdnDims d{kHk, kHv, kDk, kDv, kConvK};
  Inputs in = MakeInputs(be, T);
  const std::vector<float> s0 = be.DownloadF32(in.st.rec);
  // The prep's outputs, exactly as the op computes them (q scaled by dk^-1/2, both l2-normalised).
  float *q = nullptr, *k = nullptr, *v = nullptr, *g = nullptr, *beta = nullptr;
  Die("malloc", cudaMalloc(&q, sizeof(float) * T * kHk * kDk));
  Die("malloc", cudaMalloc(&k, sizeof(float) * T * kHk * kDk));
  Die("malloc", cudaMalloc(&v, sizeof(float) * T * kHv * kDv));
  Die("malloc", cudaMalloc(&g, sizeof(float) * T * kHv));
  Die("malloc", cudaMalloc(&beta, sizeof(float) * T * kHv));
  be.Synchronize();
  Die("prep", K::GdnPrep(static_cast<const K::bf16*>(in.y.data), static_cast<const K::bf16*>(in.braw.data),
                         static_cast<const K::bf16*>(in.araw.data), in.a_log.ptr<float>(), in.dt_bias.ptr<float>(), T,
                         kHk, kHv, kDk, kDv, q, k, v, g, beta, nullptr));
  Die("prep sync", cudaDeviceSynchronize());
  be.GatedDeltaRule(in.y, in.braw, in.araw, in.a_log, in.dt_bias, d, in.st, Span(T, StateMode::kUpdate), in.o);
  const std::vector<float> o = be.DownloadF32(in.o), s1 = be.DownloadF32(in.st.rec);
  FILE* f = std::fopen(path, "wb");
  if (f == nullptr) {
    std::fprintf(stderr, "cannot write %s\n", path);
    std::exit(1);
  }
  const int32_t hdr[5] = {static_cast<int32_t>(T), kHk, kHv, kDk, kDv};
  std::fwrite("SPECDGDN", 1, 8, f);
  std::fwrite(hdr, sizeof(hdr), 1, f);
  auto put_dev = [&](const float* p, int64_t n) {
    std::vector<float> h(static_cast<size_t>(n));
    Die("download", cudaMemcpy(h.data(), p, sizeof(float) * n, cudaMemcpyDeviceToHost));
    std::fwrite(h.data(), sizeof(float), h.size(), f);
  };
  put_dev(q, T * kHk * kDk);
  put_dev(k, T * kHk * kDk);
  put_dev(v, T * kHv * kDv);
  put_dev(g, T * kHv);
  put_dev(beta, T * kHv);
  std::fwrite(s0.data(), sizeof(float), s0.size(), f);
  std::fwrite(o.data(), sizeof(float), o.size(), f);
  std::fwrite(s1.data(), sizeof(float), s1.size(), f);
  std::fclose(f);
  for (float* p : {q, k, v, g, beta}) cudaFree(p);
  std::printf("wrote %s (T=%lld: q, k, v, g, beta, initial state, o, final state; fp32)\n", path,
              static_cast<long long>(T));
}

// (b): the op's kernels on a stream of our own, captured 50 times into one graph.
struct DecodeTimes {
  double op_us, rec_us, fused_us;
};
DecodeTimes DecodeUs(int T, int mode) {
  constexpr int kCalls = 50, kReplays = 30;
  const int64_t C = 2 * int64_t{kHk} * kDk + int64_t{kHv} * kDv, L = 16;
  cudaStream_t s;
  Die("stream", cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  K::bf16 *y, *braw, *araw, *o;
  float *a_log, *dt_bias, *q, *k, *v, *g, *beta, *state, *lk, *lv, *lg, *lb;
  K::SeqMeta* seqs;
  Die("malloc", cudaMalloc(&y, sizeof(K::bf16) * T * C));
  Die("malloc", cudaMalloc(&braw, sizeof(K::bf16) * T * kHv));
  Die("malloc", cudaMalloc(&araw, sizeof(K::bf16) * T * kHv));
  Die("malloc", cudaMalloc(&o, sizeof(K::bf16) * T * kHv * kDv));
  Die("malloc", cudaMalloc(&a_log, sizeof(float) * kHv));
  Die("malloc", cudaMalloc(&dt_bias, sizeof(float) * kHv));
  Die("malloc", cudaMalloc(&q, sizeof(float) * T * kHk * kDk));
  Die("malloc", cudaMalloc(&k, sizeof(float) * T * kHk * kDk));
  Die("malloc", cudaMalloc(&v, sizeof(float) * T * kHv * kDv));
  Die("malloc", cudaMalloc(&g, sizeof(float) * T * kHv));
  Die("malloc", cudaMalloc(&beta, sizeof(float) * T * kHv));
  Die("malloc", cudaMalloc(&state, sizeof(float) * kHv * kDk * kDv));
  Die("malloc", cudaMalloc(&lk, sizeof(float) * L * kHk * kDk));
  Die("malloc", cudaMalloc(&lv, sizeof(float) * L * kHv * kDv));
  Die("malloc", cudaMalloc(&lg, sizeof(float) * L * kHv));
  Die("malloc", cudaMalloc(&lb, sizeof(float) * L * kHv));
  Die("malloc", cudaMalloc(&seqs, sizeof(K::SeqMeta)));
  Die("rand", K::RandomNormal(y, true, T * C, 1.f, 0.f, 21, s));
  Die("rand", K::RandomNormal(braw, true, T * kHv, 1.f, 0.f, 22, s));
  Die("rand", K::RandomNormal(araw, true, T * kHv, 1.f, 0.f, 23, s));
  Die("rand", K::RandomNormal(a_log, false, kHv, 0.5f, -1.f, 24, s));
  Die("rand", K::RandomNormal(dt_bias, false, kHv, 0.5f, 0.f, 25, s));
  Die("rand", K::RandomNormal(state, false, int64_t{kHv} * kDk * kDv, 0.05f, 0.f, 26, s));
  const K::SeqMeta sm{0, 0, T, 100, mode, 0};
  Die("meta", cudaMemcpyAsync(seqs, &sm, sizeof(sm), cudaMemcpyHostToDevice, s));
  Die("sync", cudaStreamSynchronize(s));
  auto op = [&](int which) {  // 0: recurrence alone, 1: prep + log + recurrence, 2: the fused kernel
    if (which == 2) {
      Die("fused", K::GdnFusedStep(y, braw, araw, a_log, dt_bias, seqs, 1, T, kHk, kHv, kDk, kDv, state, o, L, lk, lv,
                                   lg, lb, s));
      return;
    }
    if (which == 1) {
      Die("prep", K::GdnPrep(y, braw, araw, a_log, dt_bias, T, kHk, kHv, kDk, kDv, q, k, v, g, beta, s));
      Die("log", K::GdnLogWrite(k, v, g, beta, seqs, 1, T, kHk, kHv, kDk, kDv, L, lk, lv, lg, lb, s));
    }
    Die("recurrent", K::GdnRecurrent(q, k, v, g, beta, seqs, 1, kHk, kHv, kDk, kDv, state, o, K::kGdnChunkMinLen, s));
  };
  op(1);  // q/k/v/g/beta for the recurrence-only graph
  auto time_graph = [&](int which) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    Die("capture", cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < kCalls; ++i) op(which);
    Die("capture end", cudaStreamEndCapture(s, &graph));
    Die("instantiate", cudaGraphInstantiate(&exec, graph, 0));
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    for (int i = 0; i < 3; ++i) Die("launch", cudaGraphLaunch(exec, s));
    std::vector<double> t;
    for (int i = 0; i < kReplays; ++i) {
      cudaEventRecord(e0, s);
      Die("launch", cudaGraphLaunch(exec, s));
      cudaEventRecord(e1, s);
      Die("sync", cudaEventSynchronize(e1));
      float ms = 0;
      cudaEventElapsedTime(&ms, e0, e1);
      t.push_back(ms * 1e3 / kCalls);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    return Median(t);
  };
  const DecodeTimes r{time_graph(1), time_graph(0), time_graph(2)};
  for (void* p : std::initializer_list<void*>{y, braw, araw, o, a_log, dt_bias, q, k, v, g, beta, state, lk, lv, lg,
                                              lb, seqs}) {
    cudaFree(p);
  }
  cudaStreamDestroy(s);
  return r;
}

}  // namespace

int main() {
  auto chunked = MakeBackend("cuda");
  if (!chunked.ok()) {
    std::fprintf(stderr, "%s\n", chunked.status().message().c_str());
    return 1;
  }
  // The token-by-token path for comparison.
  BackendOptions token_by_token;
  token_by_token.gdn_chunked = false;
  auto recurrent = MakeBackend("cuda", token_by_token);
  if (!recurrent.ok()) return 1;
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("GDN rule, Hk %d Hv %d dk %d dv %d, batch 1, on %s\n", kHk, kHv, kDk, kDv, prop.name);
  std::printf("(a) prefill, one update span from a populated state: GatedDeltaRule op (prep + rule), median\n");
  for (int64_t T : {int64_t{512}, int64_t{8192}}) {
    const double c = PrefillMs(**chunked, T, 20);
    const double r = PrefillMs(**recurrent, T, T > 1024 ? 5 : 10);
    std::printf("  T=%5lld  chunked %8.3f ms   recurrent %9.3f ms   (%.1fx)\n", static_cast<long long>(T), c, r, r / c);
  }
  if (const char* path = std::getenv("SPECD_GDN_DUMP")) WriteDump(**chunked, path, 8192);
  std::printf("(b) decode / verify per layer (CUDA graph of 50 calls, median replay / 50)\n");
  for (auto [T, mode, name] : {std::tuple{9, 1, "verify T=9 (kLog)"}, std::tuple{1, 0, "decode T=1 (kUpdate)"}}) {
    const DecodeTimes t = DecodeUs(T, mode);
    std::printf("  %-22s fused kernel %7.2f us   prep+log+recurrence %7.2f us   recurrence alone %7.2f us\n", name,
                t.fused_us, t.op_us, t.rec_us);
  }
  return 0;
}
