// GPU figures at batch 1 (issue "CUDA backend", item 5): the two ceilings (device copy bandwidth,
// bf16 GEMM rate), then decode ms/token and verify ms for T = 1..9 on random-weight models with
// Qwen3.5-0.8B and 9B shapes (bf16 weights generated on the GPU), each next to its floor:
// streamed weight bytes / measured copy bandwidth.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "checkpoint/presets.h"
#include "qwen35/model.h"
#include "runtime/backend.h"
#include "specd/kernels.h"
#include "gpu_bench_util.h"

using namespace specd;
using specd::bench::CopyBandwidth;
using specd::bench::Median;
using specd::bench::Now;

namespace {

double GemmRate(Backend& be) {
  const int64_t n = 8192;
  Tensor x = be.Random(DType::kBF16, {n, n}, 1.f, 0.f, 1), w = be.Random(DType::kBF16, {n, n}, 1.f, 0.f, 2);
  Tensor y = be.Alloc(DType::kBF16, {n, n});
  for (int i = 0; i < 3; ++i) be.Gemm(x, w, y);
  be.Synchronize();
  std::vector<double> t;
  for (int i = 0; i < 10; ++i) {
    const double t0 = Now();
    be.Gemm(x, w, y);
    be.Synchronize();
    t.push_back(Now() - t0);
  }
  return 2.0 * n * n * n / Median(t);
}

// Time `reps` calls of f captured in one graph (launch gaps as in a decode step), per call.
template <typename F>
double GraphTimePerCall(Backend& be, const std::string& key, int reps, F f) {
  Tensor out;
  if (!be.BeginGraphCapture(key)) return -1;
  for (int i = 0; i < reps; ++i) f(i);
  if (!be.EndGraphCapture(key, out).ok()) return -1;
  std::vector<double> t;
  for (int r = 0; r < 12; ++r) {
    be.Synchronize();
    const double t0 = Now();
    be.ReplayGraph(key, &out);
    be.Synchronize();
    if (r >= 2) t.push_back(Now() - t0);
  }
  be.DropGraphs(key);
  return Median(t) / reps;
}

// One-row GEMMs at the 9B decode shapes, rotating over enough weight copies that L2 (50 MB on
// H200) cannot serve them: the achieved read bandwidth is what a decode step's projections get.
// Plus the cost of one tiny kernel inside a graph (the per-launch overhead fusion removes).
std::string GemvTable(Backend& be, double copy_bw) {
  struct Shape {
    const char* what;
    int64_t m, k;
  };
  const Shape shapes[] = {{"gdn in_proj (qkv+z+b+a)", 8192 + 4096 + 64, 4096}, {"gdn in_proj_qkv", 8192, 4096},
                          {"out_proj / o_proj", 4096, 4096},                    {"mlp gate+up", 24576, 4096},
                          {"mlp gate", 12288, 4096},                           {"mlp down", 4096, 12288},
                          {"lm_head (fp32 out)", 248320, 4096}};
  // Variants: warps per row x chunks in flight (0 = the shape rule the decode step uses).
  const int variants[][2] = {{0, 0}, {1, 4}, {2, 4}, {4, 4}, {1, 8}, {2, 8}, {4, 8}};
  std::string t = "| one-row GEMM (9B) | MB | us (tensor cores) | GB/s | / copy bw |";
  for (const auto& v : variants) {
    if (v[0] > 0) t += fmt::format(" CUDA cores, {} warps x {} us |", v[0], v[1]);
  }
  t += " 9 rows us | GB/s | 40 rows, wide form us | 40 rows, cuBLASLt us | 64 rows, wide us | 64 rows, cuBLASLt us |\n"
       "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& sh : shapes) {
    const double mb = 2.0 * sh.m * sh.k;
    const int copies = std::max(2, static_cast<int>(std::ceil(400e6 / mb)));
    std::vector<Tensor> ws;
    for (int i = 0; i < copies; ++i) ws.push_back(be.Random(DType::kBF16, {sh.m, sh.k}, 0.02f, 0.f, 100 + i));
    Tensor x = be.Random(DType::kBF16, {1, sh.k}, 1.f, 0.f, 99);
    const bool f32 = sh.m > 100000;
    Tensor y = be.Alloc(f32 ? DType::kF32 : DType::kBF16, {1, sh.m});
    std::vector<double> per;
    for (const auto& v : variants) {
      kernels::SetCudaCoreDecode(v[0] > 0);  // the sweep is of the CUDA-core one-row kernel
      kernels::SetSkinnyVariant(v[0], v[1]);
      per.push_back(GraphTimePerCall(be, fmt::format("gemv{}_{}_{}", sh.m * sh.k, v[0], v[1]), 4 * copies,
                                     [&](int i) { be.Gemm(x, ws[i % copies], y); }));
    }
    kernels::SetSkinnyVariant(0, 0);
    kernels::SetCudaCoreDecode(false);
    // A verify of k = 8 (9 rows): the same tensor-core kernel.
    Tensor x9 = be.Random(DType::kBF16, {9, sh.k}, 1.f, 0.f, 98);
    Tensor y9 = be.Alloc(f32 ? DType::kF32 : DType::kBF16, {9, sh.m});
    const double per9 = GraphTimePerCall(be, fmt::format("gemm9_{}", sh.m * sh.k), 4 * copies,
                                         [&](int i) { be.Gemm(x9, ws[i % copies], y9); });
    // Batched verify (8 and 12 sequences of k = 4): the row-invariant wide form against cuBLASLt.
    double wide[2][2];
    for (int i = 0; i < 2; ++i) {
      const int64_t rows = i == 0 ? 40 : 64;
      Tensor xr = be.Random(DType::kBF16, {rows, sh.k}, 1.f, 0.f, 97);
      Tensor yr = be.Alloc(f32 ? DType::kF32 : DType::kBF16, {rows, sh.m});
      for (int lt = 0; lt < 2; ++lt) {
        ChangeOptions(be, [&](BackendOptions& o) { o.skinny_wide = lt == 0; });
        wide[i][lt] = GraphTimePerCall(be, fmt::format("gemm{}_{}_{}", rows, sh.m * sh.k, lt), 4 * copies,
                                       [&](int j) { be.Gemm(xr, ws[j % copies], yr); });
      }
      ChangeOptions(be, [&](BackendOptions& o) { o.skinny_wide = false; });
    }
    t += fmt::format("| {} [{}x{}] | {:.1f} | {:.2f} | {:.0f} | {:.2f} |", sh.what, sh.m, sh.k, mb / 1e6, per[0] * 1e6,
                     mb / per[0] / 1e9, mb / per[0] / copy_bw);
    for (size_t i = 1; i < per.size(); ++i) t += fmt::format(" {:.2f} |", per[i] * 1e6);
    t += fmt::format(" {:.2f} | {:.0f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} |\n", per9 * 1e6, mb / per9 / 1e9,
                     wide[0][0] * 1e6, wide[0][1] * 1e6, wide[1][0] * 1e6, wide[1][1] * 1e6);
  }
  Tensor a = be.Random(DType::kF32, {1, 64}, 1.f, 0.f, 5), b = be.Random(DType::kBF16, {1, 64}, 1.f, 0.f, 6);
  const double tiny = GraphTimePerCall(be, "tiny", 500, [&](int) { be.Add(a, b, a); });
  t += fmt::format("\none tiny kernel (64-element residual add) in a graph of 500: {:.2f} us each\n", tiny * 1e6);
  be.Synchronize();
  return t;
}

// Row argmax over the real vocabulary (greedy token choice on the device): µs per call for R
// rows, launches included, and the rate at which it reads the logits.
std::string ArgmaxTable(Backend& be) {
  constexpr int64_t kVocab = 248320;
  std::string t = "| argmax rows, V = 248320 | us per call | GB/s read |\n|---|---|---|\n";
  for (int64_t R : {1, 9, 33}) {
    Tensor l = be.Random(DType::kF32, {R, kVocab}, 5.f, 0.f, 9);
    Tensor ids = be.Alloc(DType::kI32, {R});
    for (int i = 0; i < 10; ++i) be.ArgmaxRows(l, ids);
    be.Synchronize();
    constexpr int kIters = 200;
    const double t0 = Now();
    for (int i = 0; i < kIters; ++i) be.ArgmaxRows(l, ids);
    be.Synchronize();
    const double us = (Now() - t0) / kIters * 1e6;
    t += fmt::format("| R = {} | {:.2f} | {:.0f} |\n", R, us, static_cast<double>(R * kVocab * 4) / (us * 1e3));
  }
  return t;
}

// Sampled token choice (ChooseTokens) over the real vocabulary: µs per call on the device next to
// the host path it replaces (copy the rows to the host, then the fp64 softmax + sort per row).
// ChooseTokens rewrites its rows, so each call starts from a fresh copy; the copy is timed on
// its own and subtracted.
std::string SampledChoiceTable(Backend& be) {
  constexpr int64_t kVocab = 248320;
  struct Case {
    const char* name;
    float T;
    int top_k;
    float top_p;
    bool verify;
  };
  const Case cases[] = {{"T 0.8, top-k 50, top-p 0.95", 0.8f, 50, 0.95f, false},
                        {"T 1, no filter", 1.f, 0, 1.f, false},
                        {"T 1, top-p 0.9, verify rows", 1.f, 0, 0.9f, true}};
  std::string t =
      "| sampled token choice, V = 248320 | rows | device us per call | host path ms | host / device |\n"
      "|---|---|---|---|---|\n";
  auto cpu = MakeCpuBackend();
  for (const Case& c : cases) {
    for (int64_t R : {1, 9, 33}) {
      Tensor src = be.Random(DType::kF32, {R, kVocab}, 4.f, 0.f, 11);
      Tensor l = be.Empty(DType::kF32, {R, kVocab});
      Tensor out = be.Alloc(DType::kI32, {R, 2});
      std::vector<TokenRowSpec> rows(static_cast<size_t>(R));
      for (int64_t r = 0; r < R; ++r) {
        TokenRowSpec& s = rows[r];
        s.temperature = c.T;
        s.top_k = c.top_k;
        s.top_p = c.top_p;
        s.seed = 5;
        s.position = 100 + r;
        if (c.verify && r + 1 < R) {
          s.draft = static_cast<int32_t>((r * 7919) % kVocab);
          s.index = static_cast<int32_t>(r) + 1;
        }
      }
      auto timed = [&](bool choose) {
        for (int i = 0; i < 5; ++i) {
          be.CopyRows(src, l);
          if (choose) be.ChooseTokens(l, rows, Tensor{}, out);
        }
        be.Synchronize();
        constexpr int kIters = 50;
        const double t0 = Now();
        for (int i = 0; i < kIters; ++i) {
          be.CopyRows(src, l);
          if (choose) be.ChooseTokens(l, rows, Tensor{}, out);
        }
        be.Synchronize();
        return (Now() - t0) / kIters;
      };
      // Medians of interleaved runs: one slow copy-only run must not move the difference.
      std::vector<double> with, without;
      for (int rep = 0; rep < 5; ++rep) {
        with.push_back(timed(true));
        without.push_back(timed(false));
      }
      const double dev_us = (Median(with) - Median(without)) * 1e6;
      // The host path: copy the rows down, then the host rule per row.
      be.CopyRows(src, l);
      be.Synchronize();
      const double h0 = Now();
      std::vector<float> host = be.DownloadF32(l);
      Tensor hl = cpu->Upload(host.data(), DType::kF32, {R, kVocab}, DType::kF32);
      Tensor hout = cpu->Alloc(DType::kI32, {R, 2});
      cpu->ChooseTokens(hl, rows, Tensor{}, hout);
      const double host_ms = (Now() - h0) * 1e3;
      t += fmt::format("| {} | {} | {:.1f} | {:.1f} | {:.0f}x |\n", c.name, R, dev_us, host_ms,
                       host_ms * 1e3 / dev_us);
    }
  }
  if (!be.TakeError().ok()) t += "(device error during the sampled-choice table)\n";
  return t;
}

// One MoE FFN layer at Qwen3.5-35B-A3B shapes (H 2048, E 256, k 8, Ie 512, shared Is 512) for
// decode and verify row counts: the device path (captured in a graph, and op by op) next to the
// host-list path it replaced, and the floor: the weights the call must read (router, the
// experts its rows hit, the shared expert) at the measured copy bandwidth.
std::string MoeTable(Backend& be, double copy_bw) {
  const int64_t H = 2048, E = 256, Ie = 512, Is = 512;
  const int k = 8;
  MoeTensors w;
  const float sh = 1.f / std::sqrt(static_cast<float>(H)), si = 1.f / std::sqrt(static_cast<float>(Ie));
  w.router = be.Random(DType::kBF16, {E, H}, sh, 0.f, 21);
  w.gate_up = be.Random(DType::kBF16, {E, 2 * Ie, H}, sh, 0.f, 22);
  w.down = be.Random(DType::kBF16, {E, H, Ie}, si, 0.f, 23);
  w.shared_gate_up = be.Random(DType::kBF16, {2 * Is, H}, sh, 0.f, 24);  // stacked, as the loader stores it
  w.shared_gate = w.shared_gate_up.Rows(0, Is);
  w.shared_up = w.shared_gate_up.Rows(Is, Is);
  w.shared_down = be.Random(DType::kBF16, {H, Is}, si, 0.f, 26);
  w.shared_router = be.Random(DType::kBF16, {1, H}, sh, 0.f, 27);
  w.top_k = k;
  std::string t =
      "| MoE FFN layer, 35B-A3B shapes | rows | experts hit | MB read | floor us | device, graph us | device, op by op us "
      "| host lists us | graph / floor |\n|---|---|---|---|---|---|---|---|---|\n";
  for (int64_t N : {1, 4, 9, 17}) {
    Tensor x = be.Random(DType::kBF16, {N, H}, 1.f, 0.f, 30 + N);
    Tensor out = be.Empty(DType::kBF16, {N, H});
    std::vector<std::vector<int32_t>> routing;
    be.SetMoeRoutingHooks(&routing, nullptr);
    be.MoeFfn(x, w, out);
    be.SetMoeRoutingHooks(nullptr, nullptr);
    std::vector<char> hit(static_cast<size_t>(E), 0);
    for (int32_t e : routing.at(0)) hit[static_cast<size_t>(e)] = 1;
    const int64_t experts = std::count(hit.begin(), hit.end(), 1);
    const double bytes = 2.0 * (E * H + experts * 3 * H * Ie + 3 * H * Is + H);
    const double floor_us = bytes / copy_bw * 1e6;  // the floor convention of the decode table
    const double graph_us =
        GraphTimePerCall(be, "moe" + std::to_string(N), 20, [&](int) { be.MoeFfn(x, w, out); }) * 1e6;
    auto op_by_op = [&]() {
      for (int i = 0; i < 3; ++i) be.MoeFfn(x, w, out);
      be.Synchronize();
      std::vector<double> ts;
      for (int r = 0; r < 10; ++r) {
        const double t0 = Now();
        be.MoeFfn(x, w, out);
        be.Synchronize();
        ts.push_back(Now() - t0);
      }
      return Median(ts) * 1e6;
    };
    const double dev_us = op_by_op();
    ChangeOptions(be, [&](BackendOptions& o) { o.moe_device = false; });
    const double host_us = op_by_op();
    ChangeOptions(be, [&](BackendOptions& o) { o.moe_device = true; });
    t += fmt::format("| | {} | {} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {:.2f} |\n", N, experts, bytes / 1e6,
                     floor_us, graph_us, dev_us, host_us, graph_us / floor_us);
  }
  if (!be.TakeError().ok()) t += "(device error during the MoE table)\n";
  return t;
}

}  // namespace

int main() {
  auto bo = MakeBackend("cuda");
  if (!bo.ok()) {
    std::fprintf(stderr, "gpu_bench: %s\n", bo.status().ToString().c_str());
    return 1;
  }
  Backend& be = **bo;
  ChangeOptions(be, [&](BackendOptions& o) { o.graph_limit = 128; o.graph_capture_after = 1; });  // the timed graphs are captured where they are built
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  const double bw = CopyBandwidth();
  const double flops = GemmRate(be);
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  std::printf("copy bandwidth (read+write): %.0f GB/s; bf16 GEMM 8192^3: %.0f TFLOP/s\n\n", bw / 1e9, flops / 1e12);
  std::printf("%s\n", GemvTable(be, bw).c_str());
  std::printf("%s\n", ArgmaxTable(be).c_str());
  std::printf("%s\n", SampledChoiceTable(be).c_str());
  std::printf("%s\n", MoeTable(be, bw).c_str());
  std::printf("| model | weights GB | streamed GB | floor ms | decode ms | decode/floor |");
  for (int T = 1; T <= 9; ++T) std::printf(" verify T=%d ms |", T);
  std::printf("\n|---|---|---|---|---|---|");
  for (int T = 1; T <= 9; ++T) std::printf("---|");
  std::printf("\n");
  std::vector<std::string> profiles, no_graph;
  for (bool nine : {false, true}) {
    const ModelConfig c = ReleasedShapes(nine ? "9B" : "0.8B").value();
    auto model = Qwen35Model::Random(c, &be, 7);
    const double wgb = static_cast<double>(model->weight_bytes());
    const double embed = static_cast<double>(c.vocab_size) * c.hidden_size * 2;
    // Decode reads every weight once, except the embedding table (one row) when untied.
    const double streamed = c.tie_word_embeddings ? wgb : wgb - embed;
    CacheOptions co;
    co.max_ctx = 1024;
    co.log_capacity = 17;
    auto cache = std::move(model->NewCache(co)).value();
    const int slot = *cache->AllocSlot();
    std::vector<int32_t> prompt(128);
    for (int i = 0; i < 128; ++i) prompt[i] = (i * 7919) % 200000;
    auto check = [&](const StatusOr<ForwardOutput>& o) {
      if (!o.ok()) {
        std::fprintf(stderr, "forward failed: %s\n", o.status().ToString().c_str());
        std::exit(1);
      }
    };
    check(model->Forward({SeqInput{slot, prompt, StateMode::kUpdate, false}}, *cache));
    be.Synchronize();
    std::vector<double> dec;
    for (int i = 0; i < 40; ++i) {
      const double t0 = Now();
      check(model->Forward({SeqInput{slot, {prompt[i % 128]}, StateMode::kUpdate, false}}, *cache));
      be.Synchronize();
      if (i >= 5) dec.push_back(Now() - t0);
    }
    const double d = Median(dec);
    // The same decode op by op (no graph), to show what the graph saves.
    ChangeOptions(be, [&](BackendOptions& o) { o.cuda_graphs = false; });
    std::vector<double> dec_nograph;
    for (int i = 0; i < 20; ++i) {
      const double t0 = Now();
      check(model->Forward({SeqInput{slot, {prompt[i % 128]}, StateMode::kUpdate, false}}, *cache));
      be.Synchronize();
      if (i >= 3) dec_nograph.push_back(Now() - t0);
    }
    ChangeOptions(be, [&](BackendOptions& o) { o.cuda_graphs = true; });
    // And with graphs but without programmatic dependent launch of the projections.
    kernels::SetProgrammaticLaunch(false);
    be.DropGraphs(":");
    std::vector<double> dec_nopdl;
    for (int i = 0; i < 25; ++i) {
      const double t0 = Now();
      check(model->Forward({SeqInput{slot, {prompt[i % 128]}, StateMode::kUpdate, false}}, *cache));
      be.Synchronize();
      if (i >= 5) dec_nopdl.push_back(Now() - t0);
    }
    kernels::SetProgrammaticLaunch(true);
    be.DropGraphs(":");
    // And with the CUDA-core one-row GEMMs instead of the tensor-core ones.
    kernels::SetCudaCoreDecode(true);
    std::vector<double> dec_simt;
    for (int i = 0; i < 25; ++i) {
      const double t0 = Now();
      check(model->Forward({SeqInput{slot, {prompt[i % 128]}, StateMode::kUpdate, false}}, *cache));
      be.Synchronize();
      if (i >= 5) dec_simt.push_back(Now() - t0);
    }
    kernels::SetCudaCoreDecode(false);
    be.DropGraphs(":");
    no_graph.push_back(fmt::format("Qwen3.5-{} shapes: decode {:.3f} ms with graphs, {:.3f} ms op by op, {:.3f} ms with graphs but no programmatic launch, {:.3f} ms with CUDA-core one-row GEMMs",
                                   nine ? "9B" : "0.8B", d * 1e3, Median(dec_nograph) * 1e3, Median(dec_nopdl) * 1e3,
                                   Median(dec_simt) * 1e3));
    std::printf("| Qwen3.5-%s shapes | %.2f | %.2f | %.3f | %.3f | %.2f |", nine ? "9B" : "0.8B", wgb / 1e9,
                streamed / 1e9, streamed / bw * 1e3, d * 1e3, d / (streamed / bw));
    for (int T = 1; T <= 9; ++T) {
      std::vector<double> ts;
      for (int r = 0; r < 12; ++r) {
        std::vector<int32_t> toks(prompt.begin() + r, prompt.begin() + r + T);
        const double t0 = Now();
        (void)cache->BeginLog(slot, false);
        check(model->Forward({SeqInput{slot, toks, StateMode::kLog, true}}, *cache));
        (void)cache->Commit(slot, (T + 1) / 2);
        be.Synchronize();
        if (r >= 2) ts.push_back(Now() - t0);
        if (cache->length(slot) > 900) {
          cache->ResetSlot(slot);
          check(model->Forward({SeqInput{slot, prompt, StateMode::kUpdate, false}}, *cache));
          be.Synchronize();
        }
      }
      std::printf(" %.3f (%.2fx) |", Median(ts) * 1e3, Median(ts) / d);
    }
    std::printf("\n");
    std::fflush(stdout);
    // Where a decode step's device time goes (op by op, events around each op; 10 steps).
    be.SetProfiling(true);
    (void)be.ProfileReport();
    for (int i = 0; i < 10; ++i) check(model->Forward({SeqInput{slot, {prompt[i]}, StateMode::kUpdate, false}}, *cache));
    profiles.push_back(fmt::format("### Qwen3.5-{} shapes: 10 decode steps, op by op\n\n{}", nine ? "9B" : "0.8B",
                                   be.ProfileReport()));
    be.SetProfiling(false);
    ChangeOptions(be, [&](BackendOptions& o) { o.cuda_graphs = true; });
  }
  std::printf("\n");
  for (const auto& p : no_graph) std::printf("%s\n", p.c_str());
  std::printf("\n");
  for (const auto& p : profiles) std::printf("%s\n", p.c_str());
  return 0;
}
