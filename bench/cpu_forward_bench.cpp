// CPU forward benchmark at Qwen3.5-0.8B shapes (docs/DESIGN-NOTES.md, the forward) with random weights built in
// memory: the sgemm rate of this machine first, then prefill, decode and verify (kLog + commit)
// timings of the fp32 CPU backend. Not a test; prints a table.
//
//   cpu_forward_bench [--prefill 128,512] [--decode-steps 32] [--verify-max 9] [--reps 1]
//                     [--layers 24] [--seed 1]
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cache/model_cache.h"
#include "checkpoint/config.h"
#include "checkpoint/presets.h"
#include "qwen35/model.h"
#include "runtime/backend.h"

namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Options {
  std::vector<int> prefill = {128, 512};
  int decode_prefill = 128;
  int decode_steps = 32;
  int verify_max = 9;
  int reps = 1;
  int layers = 24;
  uint64_t seed = 1;
};

std::vector<int> ParseList(const char* s) {
  std::vector<int> v;
  std::string cur;
  for (const char* p = s;; ++p) {
    if (*p == ',' || *p == '\0') {
      if (!cur.empty()) v.push_back(std::atoi(cur.c_str()));
      cur.clear();
      if (*p == '\0') break;
    } else {
      cur += *p;
    }
  }
  return v;
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--prefill") {
      o.prefill = ParseList(next());
    } else if (a == "--decode-steps") {
      o.decode_steps = std::atoi(next());
    } else if (a == "--decode-prefill") {
      o.decode_prefill = std::atoi(next());
    } else if (a == "--verify-max") {
      o.verify_max = std::atoi(next());
    } else if (a == "--reps") {
      o.reps = std::max(1, std::atoi(next()));
    } else if (a == "--layers") {
      o.layers = std::atoi(next());
    } else if (a == "--seed") {
      o.seed = std::strtoull(next(), nullptr, 10);
    } else {
      std::fprintf(stderr,
                   "usage: %s [--prefill 128,512] [--decode-steps 32] [--decode-prefill 128] "
                   "[--verify-max 9] [--reps 1] [--layers 24] [--seed 1]\n",
                   argv[0]);
      std::exit(a == "--help" || a == "-h" ? 0 : 2);
    }
  }
  return o;
}

// Qwen3.5-0.8B text model (docs/DESIGN-NOTES.md, the forward), optionally with fewer layers.
specd::ModelConfig Qwen35_0_8B(int layers) {
  specd::ModelConfig c = specd::ReleasedShapes("0.8B").value();
  c.num_hidden_layers = layers;
  c.layer_types.resize(static_cast<size_t>(layers));
  for (int i = 0; i < layers; ++i) {
    c.layer_types[i] = (i + 1) % 4 == 0 ? specd::LayerType::kFullAttention : specd::LayerType::kLinearAttention;
  }
  return c;
}

// Best-of-reps seconds for one call of cblas_sgemm: out[M, N] = x[M, K] · w[N, K]^T, the layout
// the backend's Gemm uses.
double SgemmSeconds(int M, int N, int K, int reps) {
  std::vector<float> x(static_cast<size_t>(M) * K), w(static_cast<size_t>(N) * K), out(static_cast<size_t>(M) * N);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (auto& v : x) v = u(rng);
  for (auto& v : w) v = u(rng);
  double best = 1e30;
  for (int r = 0; r < reps + 1; ++r) {  // first call warms up
    const auto t0 = Clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.f, x.data(), K, w.data(), K, 0.f, out.data(), N);
    const double s = Since(t0);
    if (r > 0) best = std::min(best, s);
  }
  return best;
}

std::vector<int32_t> RandomIds(size_t n, int64_t vocab, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> u(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

void Check(const specd::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s failed: %s\n", what, s.ToString().c_str());
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace specd;
  const Options opt = ParseArgs(argc, argv);
  const auto t_start = Clock::now();
  std::printf("cpu_forward_bench: Qwen3.5-0.8B shapes, random fp32 weights\n");
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  std::printf("threads: OpenMP %d (OMP_WAIT_POLICY=%s), OpenBLAS %d (%s)\n\n", omp_get_max_threads(),
              wait_policy != nullptr ? wait_policy : "<unset>", openblas_get_num_threads(), openblas_get_config());

  // ---- sgemm rate ----
  std::printf("%-34s %12s %10s\n", "sgemm (x[M,K] w[N,K]^T)", "ms", "GFLOP/s");
  struct G {
    int M, N, K, reps;
    const char* note;
  };
  for (const G& g : {G{1024, 1024, 1024, 5, "square"}, G{128, 3584, 1024, 5, "prefill-like (T=128, MLP up)"},
                     G{1, 4096, 1024, 50, "GEMV-like"}, G{1, 248320, 1024, 3, "GEMV lm_head"}}) {
    const double s = SgemmSeconds(g.M, g.N, g.K, g.reps);
    const double gf = 2.0 * g.M * g.N * g.K / s / 1e9;
    char label[64];
    std::snprintf(label, sizeof(label), "%dx%dx%d", g.M, g.N, g.K);
    std::printf("%-16s %-17s %12.3f %10.1f", label, g.note, s * 1e3, gf);
    if (g.M == 1) std::printf("   (%.1f GB/s of weights)", 4.0 * g.N * g.K / s / 1e9);
    std::printf("\n");
  }

  // ---- model ----
  const ModelConfig cfg = Qwen35_0_8B(opt.layers);
  auto backend = MakeCpuBackend();
  auto t0 = Clock::now();
  auto model = Qwen35Model::Random(cfg, backend.get(), opt.seed);
  const double t_build = Since(t0);
  const double wbytes = static_cast<double>(model->weight_bytes());
  std::printf("\nmodel: %d layers (%d GDN, %d attention), H %lld, V %lld, tied; weights %.3f GB fp32 "
              "(built in %.1f s)\n",
              cfg.num_hidden_layers, cfg.num_gdn_layers(), cfg.num_attn_layers(),
              static_cast<long long>(cfg.hidden_size), static_cast<long long>(cfg.vocab_size), wbytes / 1e9, t_build);

  int max_prefill = opt.decode_prefill;
  for (int p : opt.prefill) max_prefill = std::max(max_prefill, p);
  CacheOptions co;
  co.num_slots = 1;
  co.max_ctx = max_prefill + opt.decode_steps + opt.verify_max * (opt.verify_max + 1) + 16;
  co.log_capacity = std::max(opt.verify_max, 1);
  auto cache_or = model->NewCache(co);
  Check(cache_or.status(), "NewCache");
  auto& cache = *cache_or;
  auto slot_or = cache->AllocSlot();
  Check(slot_or.status(), "AllocSlot");
  const int slot = *slot_or;
  std::mt19937 rng(7);

  auto forward = [&](std::vector<int32_t> ids, StateMode mode, bool all) {
    auto o = model->Forward({SeqInput{slot, std::move(ids), mode, all}}, *cache);
    Check(o.status(), "Forward");
  };

  std::printf("\n%-40s %12s %14s\n", "phase", "ms", "rate");
  // ---- prefill ----
  for (int T : opt.prefill) {
    double best = 1e30;
    for (int r = 0; r < opt.reps; ++r) {
      cache->ResetSlot(slot);
      auto ids = RandomIds(static_cast<size_t>(T), cfg.vocab_size, rng);
      t0 = Clock::now();
      forward(std::move(ids), StateMode::kUpdate, false);
      best = std::min(best, Since(t0));
    }
    char label[64];
    std::snprintf(label, sizeof(label), "prefill %d tokens (fresh slot)", T);
    std::printf("%-40s %12.1f %10.1f tok/s\n", label, best * 1e3, T / best);
  }

  // ---- decode ----
  cache->ResetSlot(slot);
  forward(RandomIds(static_cast<size_t>(opt.decode_prefill), cfg.vocab_size, rng), StateMode::kUpdate, false);
  std::vector<double> steps;
  for (int i = 0; i < opt.decode_steps; ++i) {
    auto ids = RandomIds(1, cfg.vocab_size, rng);
    t0 = Clock::now();
    forward(std::move(ids), StateMode::kUpdate, false);
    steps.push_back(Since(t0));
  }
  std::sort(steps.begin(), steps.end());
  double mean = 0;
  for (double s : steps) mean += s;
  mean /= std::max<size_t>(steps.size(), 1);
  const double median = steps.empty() ? 0 : steps[steps.size() / 2];
  char label[80];
  std::snprintf(label, sizeof(label), "decode after %d (mean of %d steps)", opt.decode_prefill, opt.decode_steps);
  std::printf("%-40s %12.2f %10.2f tok/s\n", label, mean * 1e3, 1.0 / mean);
  std::printf("%-40s %12.2f   min %.2f ms, max %.2f ms\n", "decode median", median * 1e3,
              steps.empty() ? 0 : steps.front() * 1e3, steps.empty() ? 0 : steps.back() * 1e3);
  std::printf("%-40s %12s %10.1f GB/s (weight bytes / mean step)\n", "decode implied weight bandwidth", "",
              wbytes / mean / 1e9);

  // ---- verify: T tokens in kLog (all logits) + Commit ----
  std::printf("\n%-10s %12s %12s %14s %14s\n", "verify T", "forward ms", "commit ms", "fwd / decode", "ms / token");
  for (int T = 1; T <= opt.verify_max; ++T) {
    Check(cache->BeginLog(slot, /*checkpoint=*/false), "BeginLog");
    auto ids = RandomIds(static_cast<size_t>(T), cfg.vocab_size, rng);
    t0 = Clock::now();
    forward(std::move(ids), StateMode::kLog, true);
    const double tf = Since(t0);
    // Keep about half, as a speculative step with partial acceptance would.
    t0 = Clock::now();
    Check(cache->Commit(slot, (T + 1) / 2), "Commit");
    const double tc = Since(t0);
    std::printf("%-10d %12.2f %12.3f %14.2f %14.2f\n", T, tf * 1e3, tc * 1e3, tf / mean, tf * 1e3 / T);
  }
  std::printf("\ntotal wall time %.1f s\n", Since(t_start));
  return 0;
}
