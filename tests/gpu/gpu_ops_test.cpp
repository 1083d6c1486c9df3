// Every CUDA op against the fp32 CPU reference on random inputs, at the fixture shapes and at
// real Qwen3.5 shapes (0.8B and 9B), for T in {1, 2, 5, 9, 63, 64, 65, 300} and mixed batches.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include "gpu_test_util.h"
#include "specd/kernels.h"

namespace specd::testing {
namespace {

struct Shape {
  const char* name;
  int64_t H;
  int hq, hkv, D, hk, hv, dk, dv;
};
constexpr Shape kShapes[] = {
    {"fixture", 128, 4, 2, 64, 2, 4, 32, 32},
    {"q35_0p8b", 1024, 8, 2, 256, 16, 16, 128, 128},
    {"q35_9b", 4096, 16, 4, 256, 16, 32, 128, 128},
};

class GpuOps : public ::testing::TestWithParam<std::tuple<int, int>> {
 protected:
  void SetUp() override {
    SPECD_REQUIRE_GPU();
    sh_ = kShapes[std::get<0>(GetParam())];
    T_ = std::get<1>(GetParam());
    seed_ = static_cast<uint64_t>(T_) * 131 + std::get<0>(GetParam());
  }
  std::vector<float> Rand(size_t n, float scale = 1.f) { return RoundBf16(RandomVec(n, ++seed_, scale)); }
  void Expect(const Tensor& cpu_out, const Tensor& gpu_out, const char* what, double tol = kBf16Tol) {
    const double err = RelL2(Gpu()->DownloadF32(gpu_out), cpu_.DownloadF32(cpu_out));
    EXPECT_LE(err, tol) << what << " shape " << sh_.name << " T=" << T_;
  }
  // A batch: the span under test (T tokens on slot 1 after `past` tokens) plus a 5-token span on
  // slot 2 — different lengths in one call.
  BatchInfo Batch(int64_t past, StateMode mode) {
    BatchInfo b;
    b.seqs.push_back(SeqSpan{1, 0, T_, past, mode, 0, true});
    b.seqs.push_back(SeqSpan{2, T_, 5, 3, StateMode::kUpdate, 0, true});
    b.num_tokens = T_ + 5;
    b.max_len = std::max<int64_t>(T_, 5);
    return b;
  }
  CpuBackend cpu_;
  Shape sh_{};
  int64_t T_ = 0;
  uint64_t seed_ = 0;
};

TEST_P(GpuOps, GemmNormsAndElementwise) {
  const int64_t N = T_ + 5, H = sh_.H, M = 2 * sh_.hk * sh_.dk + sh_.hv * sh_.dv;
  auto x = MakePair(cpu_, Rand(N * H), {N, H});
  auto w = MakePair(cpu_, Rand(M * H, 1.f / std::sqrt(static_cast<float>(H))), {M, H});
  Pair y{cpu_.Alloc(DType::kF32, {N, M}), Gpu()->Alloc(DType::kBF16, {N, M})};
  cpu_.Gemm(x.cpu, w.cpu, y.cpu);
  Gpu()->Gemm(x.gpu, w.gpu, y.gpu);
  Expect(y.cpu, y.gpu, "gemm");
  // One row: the decode path (skinny GEMM), bf16 and fp32 out.
  for (DType ot : {DType::kBF16, DType::kF32}) {
    Pair y1{cpu_.Alloc(DType::kF32, {1, M}), Gpu()->Alloc(ot, {1, M})};
    cpu_.Gemm(x.cpu.Rows(1, 1), w.cpu, y1.cpu);
    Gpu()->Gemm(x.gpu.Rows(1, 1), w.gpu, y1.gpu);
    Expect(y1.cpu, y1.gpu, ot == DType::kF32 ? "gemm 1 row, fp32 out" : "gemm 1 row");
  }

  auto nw = MakePair(cpu_, Rand(H, 0.3f), {H});
  Pair n{cpu_.Alloc(DType::kF32, {N, H}), Gpu()->Alloc(DType::kBF16, {N, H})};
  for (bool unit : {true, false}) {
    cpu_.RmsNorm(x.cpu, nw.cpu, 1e-6f, unit, n.cpu);
    Gpu()->RmsNorm(x.gpu, nw.gpu, 1e-6f, unit, n.gpu);
    Expect(n.cpu, n.gpu, unit ? "rmsnorm(1+w)" : "rmsnorm(w)");
  }
  auto x2 = MakePair(cpu_, Rand(N * H), {N, H});
  for (int op = 0; op < 3; ++op) {
    Pair o{cpu_.Alloc(DType::kF32, {N, H}), Gpu()->Alloc(DType::kBF16, {N, H})};
    if (op == 0) { cpu_.Add(x.cpu, x2.cpu, o.cpu); Gpu()->Add(x.gpu, x2.gpu, o.gpu); }
    if (op == 1) { cpu_.SwiGlu(x.cpu, x2.cpu, o.cpu); Gpu()->SwiGlu(x.gpu, x2.gpu, o.gpu); }
    if (op == 2) { cpu_.SigmoidMul(x.cpu, x2.cpu, o.cpu); Gpu()->SigmoidMul(x.gpu, x2.gpu, o.gpu); }
    Expect(o.cpu, o.gpu, op == 0 ? "add" : op == 1 ? "swiglu" : "sigmoid_mul");
  }
  // Gather rows (the logits rows of a batch), exact.
  const std::vector<int64_t> rv = {N - 1, 0, T_ - 1};
  Pair rows{cpu_.Upload(rv.data(), DType::kI64, {3}, DType::kI64), Gpu()->Upload(rv.data(), DType::kI64, {3}, DType::kI64)};
  Pair g{cpu_.Alloc(DType::kF32, {3, H}), Gpu()->Alloc(DType::kBF16, {3, H})};
  cpu_.GatherRows(x.cpu, rows.cpu, g.cpu);
  Gpu()->GatherRows(x.gpu, rows.gpu, g.gpu);
  Expect(g.cpu, g.gpu, "gather", 1e-6);
  // Embedding: ids across the table, exact on bf16-rounded tables.
  const int64_t V = 300;
  auto table = MakePair(cpu_, Rand(V * H), {V, H});
  std::vector<int32_t> ids(N);
  for (int64_t i = 0; i < N; ++i) ids[i] = static_cast<int32_t>((i * 37 + 11) % V);
  Tensor idc = cpu_.Upload(ids.data(), DType::kI32, {N}, DType::kI32), idg = Gpu()->Upload(ids.data(), DType::kI32, {N}, DType::kI32);
  Pair e{cpu_.Alloc(DType::kF32, {N, H}), Gpu()->Alloc(DType::kBF16, {N, H})};
  cpu_.Embedding(table.cpu, idc, e.cpu);
  Gpu()->Embedding(table.gpu, idg, e.gpu);
  Expect(e.cpu, e.gpu, "embedding", 1e-6);
  // The fp32 residual stream: h += bf16 block output, norms reading fp32, fp32 GEMM output
  // (logits, router), fp32 row gather.
  auto hv = RandomVec(N * H, ++seed_, 2.f);
  Pair h{cpu_.Upload(hv.data(), DType::kF32, {N, H}, DType::kF32), Gpu()->Upload(hv.data(), DType::kF32, {N, H}, DType::kF32)};
  cpu_.Add(h.cpu, x2.cpu, h.cpu);
  Gpu()->Add(h.gpu, x2.gpu, h.gpu);
  Expect(h.cpu, h.gpu, "residual add (fp32)", 1e-6);
  cpu_.RmsNorm(h.cpu, nw.cpu, 1e-6f, true, n.cpu);
  Gpu()->RmsNorm(h.gpu, nw.gpu, 1e-6f, true, n.gpu);
  Expect(n.cpu, n.gpu, "rmsnorm of fp32 residual");
  Pair yf{cpu_.Alloc(DType::kF32, {N, M}), Gpu()->Alloc(DType::kF32, {N, M})};
  cpu_.Gemm(x.cpu, w.cpu, yf.cpu);
  Gpu()->Gemm(x.gpu, w.gpu, yf.gpu);
  Expect(yf.cpu, yf.gpu, "gemm, fp32 out", 1e-3);
  Pair hg{cpu_.Alloc(DType::kF32, {3, H}), Gpu()->Alloc(DType::kF32, {3, H})};
  cpu_.GatherRows(h.cpu, rows.cpu, hg.cpu);
  Gpu()->GatherRows(h.gpu, rows.gpu, hg.gpu);
  Expect(hg.cpu, hg.gpu, "gather fp32", 1e-6);
  ASSERT_TRUE(Gpu()->TakeError().ok());
}

// The fused forms (residual add + norm, stacked projections, gate/up + SwiGLU) against the CPU
// reference, at the decode shape (one row: the fused skinny kernels) and the verify/prefill
// shape (N rows: cuBLAS paths), with the outputs poisoned first so an unwritten element shows.
TEST_P(GpuOps, FusedAddNormStackedGemmAndSwiGlu) {
  const int64_t H = sh_.H, C = 2 * sh_.hk * sh_.dk + sh_.hv * sh_.dv, Vd = int64_t{sh_.hv} * sh_.dv;
  const int64_t I = 3 * H;
  for (int64_t N : {int64_t{1}, T_ + 5}) {
    const std::string at = fmt::format(" (N={})", N);
    auto x = MakePair(cpu_, Rand(N * H), {N, H});
    auto nw = MakePair(cpu_, Rand(H, 0.3f), {H});
    auto mix = MakePair(cpu_, Rand(N * H), {N, H});
    auto hv = RandomVec(N * H, ++seed_, 2.f);
    Pair h{cpu_.Upload(hv.data(), DType::kF32, {N, H}, DType::kF32), Gpu()->Upload(hv.data(), DType::kF32, {N, H}, DType::kF32)};
    Pair a{cpu_.Alloc(DType::kF32, {N, H}), Gpu()->Random(DType::kBF16, {N, H}, 1e4f, 0.f, 1)};
    cpu_.AddRmsNorm(h.cpu, mix.cpu, nw.cpu, 1e-6f, true, a.cpu);
    Gpu()->AddRmsNorm(h.gpu, mix.gpu, nw.gpu, 1e-6f, true, a.gpu);
    Expect(h.cpu, h.gpu, ("add+rmsnorm: residual" + at).c_str(), 1e-6);
    Expect(a.cpu, a.gpu, ("add+rmsnorm: normed" + at).c_str());
    // GDN in_proj: qkv, z, b, a stacked (b and a are narrow: Hv rows each).
    const int64_t ms[4] = {C, Vd, sh_.hv, sh_.hv};
    const int64_t M = C + Vd + 2 * sh_.hv;
    auto w = MakePair(cpu_, Rand(M * H, 1.f / std::sqrt(static_cast<float>(H))), {M, H});
    std::vector<Pair> outs;
    for (int64_t m : ms) outs.push_back({cpu_.Alloc(DType::kF32, {N, m}), Gpu()->Random(DType::kBF16, {N, m}, 1e4f, 0.f, 2)});
    std::vector<Tensor*> oc, og;
    for (auto& o : outs) {
      oc.push_back(&o.cpu);
      og.push_back(&o.gpu);
    }
    cpu_.GemmMulti(x.cpu, w.cpu, oc);
    Gpu()->GemmMulti(x.gpu, w.gpu, og);
    for (int i = 0; i < 4; ++i) Expect(outs[i].cpu, outs[i].gpu, (fmt::format("stacked gemm part {}", i) + at).c_str());
    // The stacked result equals separate GEMMs over the same weight rows up to summation order
    // (the kernel picks warps per row by shape, so the two may split a row differently): a part
    // written from the wrong weight rows or to the wrong place would be off by O(1).
    int64_t r0 = 0;
    for (int i = 0; i < 4; ++i) {
      Tensor sep = Gpu()->Alloc(DType::kBF16, {N, ms[i]});
      Gpu()->Gemm(x.gpu, w.gpu.Rows(r0, ms[i]), sep);
      EXPECT_LE(RelL2(Gpu()->DownloadF32(outs[i].gpu), Gpu()->DownloadF32(sep)), 5e-3) << "part " << i << at;
      r0 += ms[i];
    }
    auto gu = MakePair(cpu_, Rand(2 * I * H, 1.f / std::sqrt(static_cast<float>(H))), {2 * I, H});
    Pair act{cpu_.Alloc(DType::kF32, {N, I}), Gpu()->Random(DType::kBF16, {N, I}, 1e4f, 0.f, 3)};
    cpu_.GemmSwiGlu(x.cpu, gu.cpu, act.cpu);
    Gpu()->GemmSwiGlu(x.gpu, gu.gpu, act.gpu);
    Expect(act.cpu, act.gpu, ("gemm+swiglu" + at).c_str());
  }
  ASSERT_TRUE(Gpu()->TakeError().ok());
}

// The fused q/k preparation (split, q/k RMSNorm, RoPE) against the five ops on the GPU, bit for bit,
// and against the CPU reference to bf16 tolerance; positions differ per token and per span.
TEST_P(GpuOps, QkNormRopeEqualsTheFiveOps) {
  const int hq = sh_.hq, hkv = sh_.hkv, D = sh_.D;
  const AttnDims d{hq, hkv, D, D / 4, 1e7f};
  BatchInfo b = Batch(37, StateMode::kUpdate);
  const int64_t N = b.num_tokens;
  auto q2 = MakePair(cpu_, Rand(N * 2 * hq * D), {N, 2LL * hq * D});
  const auto kv = Rand(N * hkv * D);
  auto qn = MakePair(cpu_, Rand(D, 0.3f), {D});
  auto kn = MakePair(cpu_, Rand(D, 0.3f), {D});
  Tensor ka = Gpu()->Upload(kv.data(), DType::kF32, {N, int64_t{hkv} * D}, DType::kBF16);
  Tensor kb = Gpu()->Upload(kv.data(), DType::kF32, {N, int64_t{hkv} * D}, DType::kBF16);
  Tensor kc = cpu_.Upload(kv.data(), DType::kF32, {N, int64_t{hkv} * D}, DType::kF32);
  Tensor qa = Gpu()->Alloc(DType::kBF16, {N, int64_t{hq} * D}), ga = Gpu()->Alloc(DType::kBF16, {N, int64_t{hq} * D});
  Tensor qb = Gpu()->Random(DType::kBF16, {N, int64_t{hq} * D}, 1e4f, 0.f, 5);
  Tensor gb = Gpu()->Random(DType::kBF16, {N, int64_t{hq} * D}, 1e4f, 0.f, 6);
  Tensor qc = cpu_.Alloc(DType::kF32, {N, int64_t{hq} * D}), gc = cpu_.Alloc(DType::kF32, {N, int64_t{hq} * D});
  Gpu()->Backend::QkNormRope(q2.gpu, ka, qn.gpu, kn.gpu, 1e-6f, d, b, qa, ga);  // the five ops
  Gpu()->QkNormRope(q2.gpu, kb, qn.gpu, kn.gpu, 1e-6f, d, b, qb, gb);           // the fused kernel
  cpu_.QkNormRope(q2.cpu, kc, qn.cpu, kn.cpu, 1e-6f, d, b, qc, gc);
  ASSERT_TRUE(Gpu()->TakeError().ok());
  EXPECT_EQ(Gpu()->DownloadF32(qa), Gpu()->DownloadF32(qb)) << "q";
  EXPECT_EQ(Gpu()->DownloadF32(ga), Gpu()->DownloadF32(gb)) << "gate";
  EXPECT_EQ(Gpu()->DownloadF32(ka), Gpu()->DownloadF32(kb)) << "k";
  Expect(qc, qb, "fused q");
  Expect(gc, gb, "fused gate");
  Expect(kc, kb, "fused k");
}

TEST_P(GpuOps, AttentionWithCacheRopeAndGate) {
  const int hq = sh_.hq, hkv = sh_.hkv, D = sh_.D;
  const AttnDims d{hq, hkv, D, D / 4, 1e7f};
  const int64_t past = 37;
  // A paged cache whose slots' blocks are scattered over the pool: a shuffled permutation of a
  // pool larger than the slots need (some blocks belong to no slot), and slot 0 (unused by the
  // batches) keeps no blocks at all, as a freed slot does.
  const int64_t block = 16, max_blocks = 512 / block, pool = 3 * max_blocks + 7;
  std::vector<int32_t> perm(static_cast<size_t>(pool));
  for (int64_t i = 0; i < pool; ++i) perm[i] = static_cast<int32_t>(i);
  uint64_t r = seed_ * 2654435761u + 1;
  for (int64_t i = pool - 1; i > 0; --i) {
    r = r * 6364136223846793005ull + 1442695040888963407ull;
    std::swap(perm[i], perm[static_cast<int64_t>((r >> 33) % static_cast<uint64_t>(i + 1))]);
  }
  std::vector<int32_t> table(static_cast<size_t>(3 * max_blocks), -1);
  for (int64_t i = max_blocks; i < 3 * max_blocks; ++i) table[i] = perm[i];
  auto paged = [&](Backend& be, DType dt) {
    AttnLayerState st{be.Alloc(dt, {pool, hkv, block, D}), be.Alloc(dt, {pool, hkv, block, D}),
                      be.Alloc(DType::kI32, {3, max_blocks})};
    be.StageBlockTable(table, st.block_table);
    return st;
  };
  AttnLayerState sc = paged(cpu_, DType::kF32);
  AttnLayerState sg = paged(*Gpu(), DType::kBF16);
  // Fill the first `past` rows of slot 1 and 3 rows of slot 2 with a first call.
  BatchInfo pre;
  pre.seqs = {SeqSpan{1, 0, past, 0, StateMode::kUpdate, 0, true}, SeqSpan{2, past, 3, 0, StateMode::kUpdate, 0, true}};
  pre.num_tokens = past + 3;
  pre.max_len = past;
  auto run = [&](const BatchInfo& b, bool check) {
    const int64_t N = b.num_tokens;
    auto q2 = MakePair(cpu_, Rand(N * hq * 2 * D), {N, 2LL * hq * D});
    auto k = MakePair(cpu_, Rand(N * hkv * D), {N, int64_t{hkv} * D});
    auto v = MakePair(cpu_, Rand(N * hkv * D), {N, int64_t{hkv} * D});
    Pair q{cpu_.Alloc(DType::kF32, {N, int64_t{hq} * D}), Gpu()->Alloc(DType::kBF16, {N, int64_t{hq} * D})};
    Pair gate{cpu_.Alloc(DType::kF32, {N, int64_t{hq} * D}), Gpu()->Alloc(DType::kBF16, {N, int64_t{hq} * D})};
    cpu_.SplitQueryGate(q2.cpu, hq, D, q.cpu, gate.cpu);
    Gpu()->SplitQueryGate(q2.gpu, hq, D, q.gpu, gate.gpu);
    if (check) Expect(q.cpu, q.gpu, "split_q", 1e-6);
    cpu_.Rope(q.cpu, hq, d, b);
    Gpu()->Rope(q.gpu, hq, d, b);
    cpu_.Rope(k.cpu, hkv, d, b);
    Gpu()->Rope(k.gpu, hkv, d, b);
    if (check) Expect(q.cpu, q.gpu, "rope");
    Pair o{cpu_.Alloc(DType::kF32, {N, int64_t{hq} * D}), Gpu()->Alloc(DType::kBF16, {N, int64_t{hq} * D})};
    cpu_.Attention(q.cpu, k.cpu, v.cpu, d, sc, b, o.cpu);
    Gpu()->Attention(q.gpu, k.gpu, v.gpu, d, sg, b, o.gpu);
    cpu_.SigmoidMul(o.cpu, gate.cpu, o.cpu);
    Gpu()->SigmoidMul(o.gpu, gate.gpu, o.gpu);
    if (check) Expect(o.cpu, o.gpu, "attention");
  };
  run(pre, false);
  run(Batch(past, StateMode::kUpdate), true);
  // The pools themselves: every row the calls wrote sits in the same block on both backends.
  Expect(sc.k, sg.k, "paged k pool");
  Expect(sc.v, sg.v, "paged v pool");
  ASSERT_TRUE(Gpu()->TakeError().ok());
}

GdnLayerState MakeGdn(Backend& be, DType act, const GdnDims& d, int64_t slots, int64_t L) {
  const int64_t C = d.conv_dim();
  GdnLayerState g;
  g.conv = be.Alloc(act, {slots, d.conv_kernel, C});
  g.rec = be.Alloc(DType::kF32, {slots, d.num_v_heads, d.head_k, d.head_v});
  g.log_raw = be.Alloc(act, {slots, L, C});
  g.log_k = be.Alloc(DType::kF32, {slots, L, d.num_k_heads, d.head_k});
  g.log_v = be.Alloc(DType::kF32, {slots, L, d.num_v_heads, d.head_v});
  g.log_g = be.Alloc(DType::kF32, {slots, L, d.num_v_heads});
  g.log_beta = be.Alloc(DType::kF32, {slots, L, d.num_v_heads});
  g.ckpt_conv = be.Alloc(act, {slots, d.conv_kernel, C});
  g.ckpt_rec = be.Alloc(DType::kF32, {slots, d.num_v_heads, d.head_k, d.head_v});
  return g;
}

TEST_P(GpuOps, GatedDeltaNetConvStateLogAndCommit) {
  const GdnDims d{sh_.hk, sh_.hv, sh_.dk, sh_.dv, 4};
  const int64_t C = d.conv_dim(), Vd = int64_t{d.num_v_heads} * d.head_v;
  const int64_t L = std::max<int64_t>(T_, 5);
  GdnLayerState sc = MakeGdn(cpu_, DType::kF32, d, 3, L), sg = MakeGdn(*Gpu(), DType::kBF16, d, 3, L);
  auto cw = MakePair(cpu_, Rand(C * 4, 0.4f), {C, 4});
  auto a_log = MakePair(cpu_, RandomVec(d.num_v_heads, ++seed_, 1.f), {d.num_v_heads}, DType::kF32);
  auto dt_bias = MakePair(cpu_, RandomVec(d.num_v_heads, ++seed_, 0.5f), {d.num_v_heads}, DType::kF32);
  auto norm_w = MakePair(cpu_, Rand(d.head_v, 0.3f), {d.head_v});
  auto step = [&](const BatchInfo& b, bool check, const char* what) {
    const int64_t N = b.num_tokens;
    auto p = MakePair(cpu_, Rand(N * C), {N, C});
    auto br = MakePair(cpu_, Rand(N * d.num_v_heads), {N, d.num_v_heads});
    auto ar = MakePair(cpu_, Rand(N * d.num_v_heads), {N, d.num_v_heads});
    auto z = MakePair(cpu_, Rand(N * Vd), {N, Vd});
    Pair y{cpu_.Alloc(DType::kF32, {N, C}), Gpu()->Alloc(DType::kBF16, {N, C})};
    cpu_.CausalConvSilu(p.cpu, cw.cpu, d, sc, b, y.cpu);
    Gpu()->CausalConvSilu(p.gpu, cw.gpu, d, sg, b, y.gpu);
    if (check) Expect(y.cpu, y.gpu, "conv");
    // Feed both the same (bf16-rounded) conv output so the rule is compared alone.
    auto yr = MakePair(cpu_, RoundBf16(cpu_.DownloadF32(y.cpu)), {N, C});
    Pair o{cpu_.Alloc(DType::kF32, {N, Vd}), Gpu()->Alloc(DType::kBF16, {N, Vd})};
    cpu_.GatedDeltaRule(yr.cpu, br.cpu, ar.cpu, a_log.cpu, dt_bias.cpu, d, sc, b, o.cpu);
    Gpu()->GatedDeltaRule(yr.gpu, br.gpu, ar.gpu, a_log.gpu, dt_bias.gpu, d, sg, b, o.gpu);
    if (check) Expect(o.cpu, o.gpu, what);
    Pair on{cpu_.Alloc(DType::kF32, {N, Vd}), Gpu()->Alloc(DType::kBF16, {N, Vd})};
    cpu_.GatedRmsNorm(o.cpu, z.cpu, norm_w.cpu, 1e-6f, on.cpu);
    Gpu()->GatedRmsNorm(o.gpu, z.gpu, norm_w.gpu, 1e-6f, on.gpu);
    if (check) Expect(on.cpu, on.gpu, "gated_rmsnorm");
  };
  auto states = [&](const char* what) {
    Expect(sc.conv, sg.conv, (std::string(what) + " conv window").c_str());
    Expect(sc.rec, sg.rec, (std::string(what) + " recurrent state").c_str());
  };
  BatchInfo pre;
  pre.seqs = {SeqSpan{1, 0, 7, 0, StateMode::kUpdate, 0, true}, SeqSpan{2, 7, 3, 0, StateMode::kUpdate, 0, true}};
  pre.num_tokens = 10;
  pre.max_len = 7;
  step(pre, false, "prefill");
  states("after prefill");
  // Verify span (kLog) on slot 1 next to a plain update on slot 2.
  step(Batch(7, StateMode::kLog), true, "gdn (verify, kLog)");
  states("after verify");
  Expect(sc.log_k, sg.log_k, "log k");
  Expect(sc.log_v, sg.log_v, "log v");
  Expect(sc.log_g, sg.log_g, "log g", 1e-4);
  const int keep = static_cast<int>((T_ + 1) / 2);
  cpu_.GdnCommit(sc, d, 1, keep, false);
  Gpu()->GdnCommit(sg, d, 1, keep, false);
  states("after commit");
  // Draft-style: checkpoint, advance with log, roll back to 1 token.
  cpu_.GdnCheckpoint(sc, 2);
  Gpu()->GdnCheckpoint(sg, 2);
  BatchInfo dr;
  dr.seqs = {SeqSpan{2, 0, 2, 0, StateMode::kUpdateLog, 0, true}};
  dr.num_tokens = 2;
  dr.max_len = 2;
  step(dr, true, "gdn (draft, kUpdateLog)");
  cpu_.GdnCommit(sc, d, 2, 1, true);
  Gpu()->GdnCommit(sg, d, 2, 1, true);
  states("after rollback");
  ASSERT_TRUE(Gpu()->TakeError().ok());
}

// The fused decode/verify kernel (prep + log + recurrence in one launch) against the three-kernel
// path, bit for bit (both run the same per-column step on the same prepped values), on a batch of
// a verify span and decode tokens from a random non-zero state; then the commit of all layers in
// one launch against per-layer commits, bit for bit.
TEST(GpuGdnFused, EqualsUnfusedBitwiseAndBatchedCommitEqualsPerLayer) {
  SPECD_REQUIRE_GPU();
  CpuBackend cpu;
  for (const Shape& sh : kShapes) {
    const GdnDims d{sh.hk, sh.hv, sh.dk, sh.dv, 4};
    const int64_t C = d.conv_dim(), Vd = int64_t{d.num_v_heads} * d.head_v, L = 17;
    BatchInfo b;
    b.seqs = {SeqSpan{0, 0, 9, 20, StateMode::kLog, 0, true}, SeqSpan{1, 9, 1, 30, StateMode::kUpdate, 0, true},
              SeqSpan{2, 10, 3, 12, StateMode::kUpdateLog, 0, true}};
    b.num_tokens = 13;
    b.max_len = 9;
    const int64_t N = b.num_tokens;
    uint64_t seed = 77;
    auto rnd = [&](std::vector<int64_t> shape, float scale) {
      int64_t n = 1;
      for (auto x : shape) n *= x;
      auto v = RandomVec(static_cast<size_t>(n), ++seed, scale);
      return Gpu()->Upload(v.data(), DType::kF32, shape, shape.size() == 1 ? DType::kF32 : DType::kBF16);
    };
    Tensor y = rnd({N, C}, 1.f), br = rnd({N, d.num_v_heads}, 1.f), ar = rnd({N, d.num_v_heads}, 1.f);
    Tensor a_log = rnd({d.num_v_heads}, 1.f), dt_bias = rnd({d.num_v_heads}, 0.5f);
    auto rec0 = RandomVec(static_cast<size_t>(3 * d.num_v_heads * d.head_k * d.head_v), ++seed, 0.3f);
    GdnLayerState st[2] = {MakeGdn(*Gpu(), DType::kBF16, d, 3, L), MakeGdn(*Gpu(), DType::kBF16, d, 3, L)};
    std::vector<float> o[2];
    for (int fused = 0; fused < 2; ++fused) {
      Tensor r = Gpu()->Upload(rec0.data(), DType::kF32, st[fused].rec.shape, DType::kF32);
      Gpu()->CopyRows(r, st[fused].rec);
      Tensor out = Gpu()->Alloc(DType::kBF16, {N, Vd});
      ChangeOptions(*Gpu(), [&](BackendOptions& o) { o.gdn_fused = fused == 1; });
      Gpu()->GatedDeltaRule(y, br, ar, a_log, dt_bias, d, st[fused], b, out);
      o[fused] = Gpu()->DownloadF32(out);
    }
    ChangeOptions(*Gpu(), [&](BackendOptions& o) { o.gdn_fused = true; });
    ASSERT_TRUE(Gpu()->TakeError().ok());
    EXPECT_EQ(o[0], o[1]) << sh.name << ": o";
    EXPECT_EQ(Gpu()->DownloadF32(st[0].rec), Gpu()->DownloadF32(st[1].rec)) << sh.name << ": state";
    for (auto get : {&GdnLayerState::log_k, &GdnLayerState::log_v, &GdnLayerState::log_g, &GdnLayerState::log_beta}) {
      EXPECT_EQ(Gpu()->DownloadF32(st[0].*get), Gpu()->DownloadF32(st[1].*get)) << sh.name << ": log";
    }
    // Commit: slot 0 keeps 4 of its 9 logged tokens; slot 2 rolls back to 1 from its checkpoint
    // (taken now, so the replay must reproduce the live state's first token from it).
    std::vector<GdnLayerState> layers = {st[0], st[1]};  // views: the same device storage
    Gpu()->GdnCheckpoint(st[0], 2);
    Gpu()->GdnCheckpoint(st[1], 2);
    const auto before = Gpu()->DownloadF32(st[0].rec);
    Gpu()->GdnCommitLayers(layers, d, 0, 4, false);  // both layers, one launch each for conv and state
    GdnLayerState sep = MakeGdn(*Gpu(), DType::kBF16, d, 3, L);
    Tensor r = Gpu()->Upload(before.data(), DType::kF32, sep.rec.shape, DType::kF32);
    Gpu()->CopyRows(r, sep.rec);
    Gpu()->CopyRows(st[0].log_k, sep.log_k);
    Gpu()->CopyRows(st[0].log_v, sep.log_v);
    Gpu()->CopyRows(st[0].log_g, sep.log_g);
    Gpu()->CopyRows(st[0].log_beta, sep.log_beta);
    Gpu()->GdnCommit(sep, d, 0, 4, false);
    ASSERT_TRUE(Gpu()->TakeError().ok());
    const auto after = Gpu()->DownloadF32(st[0].rec);
    EXPECT_EQ(after, Gpu()->DownloadF32(sep.rec)) << sh.name << ": batched commit";
    EXPECT_EQ(after, Gpu()->DownloadF32(st[1].rec)) << sh.name << ": both layers committed";
    EXPECT_NE(after, before) << sh.name << ": the commit changed the state";
  }
}

// The gated delta rule over a batch of update (and other) spans from a random NON-ZERO state in
// every slot, three ways: the CPU reference, the GPU as wired (long update spans chunked), and the
// GPU token by token (the same batch with kUpdate turned into kUpdateLog, which advances the state
// identically but is never chunked). Checks o and each touched slot's final state.
//
// Bounds. Against the CPU: 1e-2 on o and state. The GPU rounds o to bf16 (RMS relative error
// ~1.5e-3) and beta to bf16 as transformers does (the CPU keeps it fp32: up to 2^-9 relative per
// token), both unrelated to the chunking; a wrong chunk boundary, gate or initial state gives
// O(1). Against the GPU recurrence both sides share the prep (same bf16 beta), so only fp32
// summation order differs: 1e-4 on the fp32 state, 1e-3 on o (bf16 rounding flips of values that
// differ by ~1e-6 relative).
void CheckGdnSpans(CpuBackend& cpu, const Shape& sh, const std::vector<SeqSpan>& spans, uint64_t seed,
                   const std::string& what) {
  const GdnDims d{sh.hk, sh.hv, sh.dk, sh.dv, 4};
  const int64_t C = d.conv_dim(), Vd = int64_t{d.num_v_heads} * d.head_v;
  BatchInfo b;
  b.seqs = spans;
  int slots = 0;
  for (const auto& s : spans) {
    b.num_tokens += s.len;
    b.max_len = std::max(b.max_len, s.len);
    slots = std::max(slots, s.slot + 1);
  }
  const int64_t N = b.num_tokens, L = b.max_len;
  GdnLayerState sc = MakeGdn(cpu, DType::kF32, d, slots, L), sg = MakeGdn(*Gpu(), DType::kBF16, d, slots, L),
                sr = MakeGdn(*Gpu(), DType::kBF16, d, slots, L);
  const std::vector<int64_t> rshape = {slots, d.num_v_heads, d.head_k, d.head_v};
  const auto s0 = RandomVec(static_cast<size_t>(slots) * d.num_v_heads * d.head_k * d.head_v, ++seed, 0.5f);
  sc.rec = cpu.Upload(s0.data(), DType::kF32, rshape, DType::kF32);
  sg.rec = Gpu()->Upload(s0.data(), DType::kF32, rshape, DType::kF32);
  sr.rec = Gpu()->Upload(s0.data(), DType::kF32, rshape, DType::kF32);
  auto rnd = [&](size_t n, float scale) { return RoundBf16(RandomVec(n, ++seed, scale)); };
  auto y = MakePair(cpu, rnd(N * C, 1.f), {N, C});
  auto br = MakePair(cpu, rnd(N * d.num_v_heads, 2.f), {N, d.num_v_heads});
  auto ar = MakePair(cpu, rnd(N * d.num_v_heads, 2.f), {N, d.num_v_heads});
  // A_log in [-4, -1]: per-token decays e^g from ~0.99 to ~0.6, so some heads carry the initial
  // state across several chunks and others forget it within one.
  auto al = RandomVec(d.num_v_heads, ++seed, 1.5f);
  for (auto& x : al) x -= 2.5f;
  auto a_log = MakePair(cpu, al, {d.num_v_heads}, DType::kF32);
  auto dt_bias = MakePair(cpu, RandomVec(d.num_v_heads, ++seed, 0.5f), {d.num_v_heads}, DType::kF32);
  Tensor oc = cpu.Alloc(DType::kF32, {N, Vd}), og = Gpu()->Alloc(DType::kBF16, {N, Vd}),
         orr = Gpu()->Alloc(DType::kBF16, {N, Vd});
  cpu.GatedDeltaRule(y.cpu, br.cpu, ar.cpu, a_log.cpu, dt_bias.cpu, d, sc, b, oc);
  Gpu()->GatedDeltaRule(y.gpu, br.gpu, ar.gpu, a_log.gpu, dt_bias.gpu, d, sg, b, og);
  BatchInfo br_b = b;
  for (auto& s : br_b.seqs) {
    if (s.mode == StateMode::kUpdate) s.mode = StateMode::kUpdateLog;
  }
  Gpu()->GatedDeltaRule(y.gpu, br.gpu, ar.gpu, a_log.gpu, dt_bias.gpu, d, sr, br_b, orr);
  ASSERT_TRUE(Gpu()->TakeError().ok()) << what;

  const auto o_cpu = cpu.DownloadF32(oc), o_gpu = Gpu()->DownloadF32(og), o_rec = Gpu()->DownloadF32(orr);
  const auto st_cpu = cpu.DownloadF32(sc.rec), st_gpu = Gpu()->DownloadF32(sg.rec), st_rec = Gpu()->DownloadF32(sr.rec);
  const int64_t sw = int64_t{d.num_v_heads} * d.head_k * d.head_v;
  auto slice = [](const std::vector<float>& v, int64_t off, int64_t n) {
    return std::vector<float>(v.begin() + off, v.begin() + off + n);
  };
  for (const auto& s : spans) {
    const bool chunked = kernels::GdnSpanChunked(static_cast<int>(s.mode), s.len, kernels::kGdnChunkMinLen);
    const std::string tag = what + " span slot " + std::to_string(s.slot) + " len " + std::to_string(s.len) +
                            (chunked ? " (chunked)" : " (recurrent)");
    const auto oc_s = slice(o_cpu, s.offset * Vd, s.len * Vd), og_s = slice(o_gpu, s.offset * Vd, s.len * Vd),
               or_s = slice(o_rec, s.offset * Vd, s.len * Vd);
    EXPECT_LE(RelL2(og_s, oc_s), 1e-2) << tag << ": o vs CPU";
    EXPECT_LE(RelL2(og_s, or_s), 1e-3) << tag << ": o vs GPU recurrence";
    const auto sc_s = slice(st_cpu, s.slot * sw, sw), sg_s = slice(st_gpu, s.slot * sw, sw),
               sr_s = slice(st_rec, s.slot * sw, sw);
    EXPECT_LE(RelL2(sg_s, sc_s), 1e-2) << tag << ": state vs CPU";
    EXPECT_LE(RelL2(sg_s, sr_s), 1e-4) << tag << ": state vs GPU recurrence";
    // The state must have moved off the initial one for update spans (else the above proves little).
    if (s.mode != StateMode::kLog) {
      EXPECT_GT(RelL2(sg_s, slice(s0, s.slot * sw, sw)), 1e-2) << tag;
    }
  }
}

// The span under test: T tokens of update (chunked from T = 32 on) on slot 1 after 100 tokens,
// next to a 5-token update on slot 2, both from non-zero states.
TEST_P(GpuOps, GatedDeltaRuleChunkedPrefillFromState) {
  if (T_ >= kernels::kGdnChunkMinLen) {
    ASSERT_TRUE(kernels::GdnChunkSupports(sh_.hk, sh_.hv, sh_.dk, sh_.dv)) << sh_.name;
  }
  CheckGdnSpans(cpu_, sh_,
                {SeqSpan{1, 0, T_, 100, StateMode::kUpdate, 0, true}, SeqSpan{2, T_, 5, 3, StateMode::kUpdate, 0, true}},
                seed_, std::string(sh_.name) + " T=" + std::to_string(T_));
}

// Qwen3.5-9B heads (Hk 16, Hv 32, dk = dv = 128): a 1000-token prefill, and a mixed batch (a
// 200-token prefill, a decode token on another slot, a 65-token prefill and a 9-token verify).
TEST(GpuGdnChunked, LongPrefillAndMixedBatch9b) {
  SPECD_REQUIRE_GPU();
  CpuBackend cpu;
  const Shape& sh = kShapes[2];
  CheckGdnSpans(cpu, sh, {SeqSpan{0, 0, 1000, 40, StateMode::kUpdate, 0, true}}, 77, "9b T=1000");
  CheckGdnSpans(cpu, sh,
                {SeqSpan{2, 0, 200, 0, StateMode::kUpdate, 0, true}, SeqSpan{0, 200, 1, 57, StateMode::kUpdate, 0, true},
                 SeqSpan{3, 201, 65, 12, StateMode::kUpdate, 0, true}, SeqSpan{1, 266, 9, 30, StateMode::kLog, 0, true}},
                78, "9b mixed");
  ASSERT_TRUE(Gpu()->TakeError().ok());
}

INSTANTIATE_TEST_SUITE_P(ShapesAndT, GpuOps,
                         ::testing::Combine(::testing::Values(0, 1, 2),
                                            ::testing::Values(1, 2, 5, 9, 63, 64, 65, 300)),
                         [](const auto& info) {
                           return std::string(kShapes[std::get<0>(info.param)].name) + "_T" +
                                  std::to_string(std::get<1>(info.param));
                         });

// One MoE block's weights on both backends. hot >= 0 makes every token's top choice that expert:
// its router row gets a large weight on column 0, and Inputs sets column 0 of every token to 1.
struct MoeCase {
  int64_t H, E, k, Ie, Is;
  int hot = -1;
};
struct MoeBlock {
  MoeTensors cpu, gpu;
};
MoeBlock MakeMoe(CpuBackend& cpu, const MoeCase& c, uint64_t seed) {
  auto R = [&](int64_t n, float s) { return RoundBf16(RandomVec(static_cast<size_t>(n), ++seed, s)); };
  const float sh = 1.f / std::sqrt(static_cast<float>(c.H));
  MoeBlock b;
  auto set = [&](Tensor MoeTensors::*f, std::vector<int64_t> shape, std::vector<float> v) {
    auto p = MakePair(cpu, v, shape);
    b.cpu.*f = p.cpu;
    b.gpu.*f = p.gpu;
  };
  auto router = R(c.E * c.H, sh);
  if (c.hot >= 0) router[c.hot * c.H] = 16.f;
  set(&MoeTensors::router, {c.E, c.H}, router);
  set(&MoeTensors::gate_up, {c.E, 2 * c.Ie, c.H}, R(c.E * 2 * c.Ie * c.H, sh));
  set(&MoeTensors::down, {c.E, c.H, c.Ie}, R(c.E * c.H * c.Ie, 1.f / std::sqrt(static_cast<float>(c.Ie))));
  set(&MoeTensors::shared_gate, {c.Is, c.H}, R(c.Is * c.H, sh));
  set(&MoeTensors::shared_up, {c.Is, c.H}, R(c.Is * c.H, sh));
  set(&MoeTensors::shared_down, {c.H, c.Is}, R(c.H * c.Is, 1.f / std::sqrt(static_cast<float>(c.Is))));
  set(&MoeTensors::shared_router, {1, c.H}, R(c.H, sh));
  b.cpu.top_k = b.gpu.top_k = static_cast<int>(c.k);
  return b;
}
std::vector<float> MoeInputs(const MoeCase& c, int64_t N, uint64_t seed) {
  auto v = RoundBf16(RandomVec(static_cast<size_t>(N * c.H), seed, 1.f));
  if (c.hot >= 0) {
    for (int64_t t = 0; t < N; ++t) v[t * c.H] = 1.f;
  }
  return v;
}
// The GPU's MoE output (bf16 values as float bits) for these rows.
std::vector<uint32_t> GpuMoeBits(const MoeBlock& b, const std::vector<float>& x, int64_t N, int64_t H) {
  Tensor xg = Gpu()->Upload(x.data(), DType::kF32, {N, H}, DType::kBF16);
  Tensor o = Gpu()->Alloc(DType::kBF16, {N, H});
  Gpu()->MoeFfn(xg, b.gpu, o);
  const auto f = Gpu()->DownloadF32(o);
  std::vector<uint32_t> bits(f.size());
  std::memcpy(bits.data(), f.data(), f.size() * sizeof(float));
  return bits;
}

const MoeCase kMoeFixture{128, 8, 2, 64, 96};
const MoeCase kMoeReal{2048, 32, 8, 512, 512};  // Qwen3.5-35B-A3B's H, k, Ie (E cut to 32)

// Against the fp32 reference replaying the GPU's routing (near-ties can flip in bf16): every row
// count the device path serves up to 64, one past kMoeDeviceMaxRows (the cuBLAS path), every token
// on one expert (its rows span several 16-row groups), and k = E (every expert holds every row).
TEST(GpuMoe, RoutedAndSharedExpertsMatchCpu) {
  SPECD_REQUIRE_GPU();
  CpuBackend cpu;
  MoeCase hot = kMoeFixture, all = kMoeFixture, real_hot = kMoeReal;
  hot.hot = 5;
  all.k = all.E;
  real_hot.hot = 17;
  const std::vector<std::pair<MoeCase, int64_t>> cases = {
      {kMoeFixture, 1}, {kMoeFixture, 5}, {kMoeFixture, 17}, {kMoeFixture, 45}, {kMoeFixture, 64},
      {kMoeFixture, kernels::kMoeDeviceMaxRows + 3}, {hot, 64}, {all, 17}, {all, 64},
      {kMoeReal, 1}, {kMoeReal, 9}, {kMoeReal, 17}, {kMoeReal, 64}, {real_hot, 40}};
  uint64_t seed = 1000;
  for (const auto& [c, N] : cases) {
    const std::string what = "H=" + std::to_string(c.H) + " k=" + std::to_string(c.k) + " hot=" +
                             std::to_string(c.hot) + " N=" + std::to_string(N);
    auto b = MakeMoe(cpu, c, seed += 100);
    // MakeMoe draws its weights from seed + 1..7: the inputs take another stream, or token t's
    // row would equal router row t and route to expert t.
    auto m = MakePair(cpu, MoeInputs(c, N, seed + 50), {N, c.H});
    Tensor oc = cpu.Alloc(DType::kF32, {N, c.H}), og = Gpu()->Alloc(DType::kBF16, {N, c.H});
    std::vector<std::vector<int32_t>> routing;
    Gpu()->SetMoeRoutingHooks(&routing, nullptr);
    Gpu()->MoeFfn(m.gpu, b.gpu, og);
    Gpu()->SetMoeRoutingHooks(nullptr, nullptr);
    ASSERT_EQ(routing.size(), 1u) << what;
    ASSERT_EQ(routing[0].size(), static_cast<size_t>(N * c.k)) << what;
    // The router GEMM (fp32 out; cuBLASLt past 16 rows) against the reference.
    Tensor lc = cpu.Alloc(DType::kF32, {N, c.E}), lg = Gpu()->Alloc(DType::kF32, {N, c.E});
    cpu.Gemm(m.cpu, b.cpu.router, lc);
    Gpu()->Gemm(m.gpu, b.gpu.router, lg);
    const auto lcv = cpu.DownloadF32(lc), lgv = Gpu()->DownloadF32(lg);
    EXPECT_LE(RelL2(lgv, lcv), 1e-3) << what << ": router logits";
    if (c.hot >= 0) {
      for (int64_t t = 0; t < N; ++t) {
        ASSERT_EQ(routing[0][t * c.k], c.hot)
            << what << ": the case routes as meant; token " << t << " logits (gpu/cpu) hot " << lgv[t * c.E + c.hot]
            << "/" << lcv[t * c.E + c.hot] << ", chosen " << lgv[t * c.E + routing[0][t * c.k]] << "/"
            << lcv[t * c.E + routing[0][t * c.k]];
      }
    }
    cpu.SetMoeRoutingHooks(nullptr, &routing);
    cpu.MoeFfn(m.cpu, b.cpu, oc);
    cpu.SetMoeRoutingHooks(nullptr, nullptr);
    const auto got = Gpu()->DownloadF32(og), ref = cpu.DownloadF32(oc);
    EXPECT_LE(RelL2(got, ref), 3e-2) << what;
    EXPECT_LE(MaxRowRelErr(got, ref, c.H), 5e-2) << what;
    ASSERT_TRUE(Gpu()->TakeError().ok()) << what;
  }
}

// The routed experts alone through the launchers, from a given routing (ids, weights [N, k]):
// no router GEMM and no shared expert, whose GEMMs go to cuBLAS past 16 rows.
std::vector<uint32_t> RoutedBits(const MoeBlock& b, const MoeCase& c, const std::vector<float>& x,
                                 const std::vector<int32_t>& ids, const std::vector<float>& wts, int64_t N) {
  namespace K = kernels;
  const int E = static_cast<int>(c.E), k = static_cast<int>(c.k);
  auto bp = [](const Tensor& t) { return static_cast<K::bf16*>(t.data); };
  Tensor xg = Gpu()->Upload(x.data(), DType::kF32, {N, c.H}, DType::kBF16);
  Tensor ig = Gpu()->Upload(ids.data(), DType::kI32, {N, k}, DType::kI32);
  Tensor wg = Gpu()->Upload(wts.data(), DType::kF32, {N, k}, DType::kF32);
  Tensor sc = Gpu()->Empty(DType::kI32, {K::MoeScratchInts(N, k, E)});
  Tensor act = Gpu()->Empty(DType::kBF16, {N * k, c.Ie}), y = Gpu()->Empty(DType::kBF16, {N * k, c.H});
  Tensor o = Gpu()->Empty(DType::kBF16, {N, c.H});
  Gpu()->Synchronize();  // the launches below go to the legacy stream
  EXPECT_EQ(K::MoeGroup(ig.ptr<int32_t>(), N, k, E, sc.ptr<int32_t>(), nullptr), cudaSuccess);
  EXPECT_EQ(K::MoeExperts(bp(xg), bp(b.gpu.gate_up), bp(b.gpu.down), sc.ptr<int32_t>(), N, k, E, c.H, c.Ie, bp(act),
                          bp(y), nullptr),
            cudaSuccess);
  EXPECT_EQ(K::MoeCombine(ig.ptr<int32_t>(), wg.ptr<float>(), sc.ptr<int32_t>(), bp(y), nullptr, nullptr, N, k, E, c.H,
                          bp(o), nullptr),
            cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto f = Gpu()->DownloadF32(o);
  std::vector<uint32_t> bits(f.size());
  std::memcpy(bits.data(), f.data(), f.size() * sizeof(float));
  return bits;
}

// Rows [r0, r0 + n) of a row-major [*, width] vector, in reverse order when asked.
template <typename T>
std::vector<T> RowsOf(const std::vector<T>& v, int64_t width, int64_t r0, int64_t n, bool reverse = false) {
  std::vector<T> out;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = reverse ? r0 + n - 1 - i : r0 + i;
    out.insert(out.end(), v.begin() + r * width, v.begin() + (r + 1) * width);
  }
  return out;
}

// The bitwise property decode == verify needs from the MoE block: a token's output does not
// depend on how many rows share the call, where it sits among them, or which other tokens share
// its experts. The whole block up to 16 rows (the router and shared-expert GEMMs are
// row-invariant that far); the routed experts at 1, 9, 17 and 64 rows from a fixed routing, with
// spread experts, every token on one expert (64 rows in one group: four 16-row passes), and k = E.
TEST(GpuMoe, RowOutputIsIndependentOfTheBatch) {
  SPECD_REQUIRE_GPU();
  CpuBackend cpu;
  MoeCase hot = kMoeReal, all = kMoeFixture;
  hot.hot = 3;
  all.k = all.E;
  for (const MoeCase& c : {kMoeFixture, kMoeReal, hot}) {
    auto b = MakeMoe(cpu, c, 77 + c.H + c.hot);
    const int64_t H = c.H;
    const auto x = MoeInputs(c, 16, 99);
    const auto whole = GpuMoeBits(b, x, 16, H);
    const auto nine = GpuMoeBits(b, RowsOf(x, H, 7, 9, true), 9, H);
    EXPECT_TRUE(nine == RowsOf(whole, H, 7, 9, true)) << "MoeFfn H=" << H << " hot=" << c.hot << ": 9 rows vs 16";
    for (int64_t r = 0; r < 16; ++r) {
      EXPECT_TRUE(GpuMoeBits(b, RowsOf(x, H, r, 1), 1, H) == RowsOf(whole, H, r, 1))
          << "MoeFfn H=" << H << " hot=" << c.hot << ": row " << r << " alone vs in 16";
    }
  }
  for (const MoeCase& c : {kMoeFixture, all, hot}) {
    auto b = MakeMoe(cpu, c, 31 + c.H + c.k);
    const int64_t H = c.H, k = c.k, N = 64;
    const auto x = MoeInputs(c, N, 5);
    std::vector<int32_t> ids(static_cast<size_t>(N * k));
    std::vector<float> wts = RandomVec(static_cast<size_t>(N * k), 7, 1.f);
    std::mt19937 rng(11);
    for (int64_t t = 0; t < N; ++t) {
      std::vector<int32_t> perm(static_cast<size_t>(c.E));
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      if (c.hot >= 0) std::swap(perm[0], *std::find(perm.begin(), perm.end(), c.hot));
      std::copy_n(perm.begin(), k, ids.begin() + t * k);
      for (int64_t r = 0; r < k; ++r) wts[t * k + r] = std::abs(wts[t * k + r]) / static_cast<float>(k);
    }
    const auto whole = RoutedBits(b, c, x, ids, wts, N);
    const std::string what = "routed H=" + std::to_string(H) + " k=" + std::to_string(k) + " hot=" +
                             std::to_string(c.hot);
    EXPECT_TRUE(RoutedBits(b, c, RowsOf(x, H, 47, 17), RowsOf(ids, k, 47, 17), RowsOf(wts, k, 47, 17), 17) ==
                RowsOf(whole, H, 47, 17))
        << what << ": 17 rows vs 64";
    EXPECT_TRUE(RoutedBits(b, c, RowsOf(x, H, 8, 9, true), RowsOf(ids, k, 8, 9, true), RowsOf(wts, k, 8, 9, true), 9) ==
                RowsOf(whole, H, 8, 9, true))
        << what << ": 9 rows reversed vs 64";
    for (int64_t r : {0, 5, 16, 40, 63}) {
      EXPECT_TRUE(RoutedBits(b, c, RowsOf(x, H, r, 1), RowsOf(ids, k, r, 1), RowsOf(wts, k, r, 1), 1) ==
                  RowsOf(whole, H, r, 1))
          << what << ": row " << r << " alone vs in 64";
    }
  }
  ASSERT_TRUE(Gpu()->TakeError().ok());
}

// Rows of one expert land in its group in atomic order; the output must not care.
TEST(GpuMoe, RepeatedCallsAreBitwiseEqual) {
  SPECD_REQUIRE_GPU();
  CpuBackend cpu;
  MoeCase hot = kMoeReal, all = kMoeFixture;
  hot.hot = 9;
  all.k = all.E;
  for (const auto& [c, N] : {std::pair{hot, int64_t{200}}, std::pair{all, int64_t{64}}, std::pair{kMoeReal, int64_t{17}}}) {
    auto b = MakeMoe(cpu, c, 5 + c.H);
    const auto x = MoeInputs(c, N, 6);
    const auto first = GpuMoeBits(b, x, N, c.H);
    for (int rep = 0; rep < 3; ++rep) {
      EXPECT_TRUE(GpuMoeBits(b, x, N, c.H) == first) << "H=" << c.H << " N=" << N << " repeat " << rep;
    }
  }
  ASSERT_TRUE(Gpu()->TakeError().ok());
}

// The loader stores the shared expert's gate and up back to back (one GEMM with the SwiGLU in its
// epilogue); up to 16 rows that must give the separate GEMMs' bits, past them (cuBLASLt over
// 2 Is columns vs two GEMMs of Is) the same values to rounding.
TEST(GpuMoe, StackedSharedExpertEqualsSeparate) {
  SPECD_REQUIRE_GPU();
  CpuBackend cpu;
  const MoeCase c = kMoeReal;
  auto b = MakeMoe(cpu, c, 4242);
  MoeTensors stacked = b.gpu;
  stacked.shared_gate_up = Gpu()->Empty(DType::kBF16, {2 * c.Is, c.H});
  stacked.shared_gate = stacked.shared_gate_up.Rows(0, c.Is);
  stacked.shared_up = stacked.shared_gate_up.Rows(c.Is, c.Is);
  Gpu()->CopyRows(b.gpu.shared_gate, stacked.shared_gate);
  Gpu()->CopyRows(b.gpu.shared_up, stacked.shared_up);
  MoeBlock sb{b.cpu, stacked};
  for (int64_t N : {int64_t{1}, int64_t{9}, int64_t{16}, int64_t{40}}) {
    const auto x = MoeInputs(c, N, 4300 + N);
    const auto sep = GpuMoeBits(b, x, N, c.H), fused = GpuMoeBits(sb, x, N, c.H);
    if (N <= 16) {
      EXPECT_TRUE(fused == sep) << "N=" << N;
    } else {
      std::vector<float> a(sep.size()), f(fused.size());
      std::memcpy(a.data(), sep.data(), a.size() * sizeof(float));
      std::memcpy(f.data(), fused.data(), f.size() * sizeof(float));
      EXPECT_LE(RelL2(f, a), 1e-2) << "N=" << N;
    }
  }
  ASSERT_TRUE(Gpu()->TakeError().ok());
}

TEST(GpuMoe, DevicePathLaunchersRejectBadShapes) {
  SPECD_REQUIRE_GPU();
  namespace K = kernels;
  EXPECT_TRUE(K::MoeDeviceApplies(17, 2048, 512, 256, 8));
  EXPECT_FALSE(K::MoeDeviceApplies(K::kMoeDeviceMaxRows + 1, 2048, 512, 256, 8));
  EXPECT_FALSE(K::MoeDeviceApplies(17, 2044, 512, 256, 8));  // rows not 16-byte multiples
  EXPECT_FALSE(K::MoeDeviceApplies(17, 2048, 512, 4, 8));    // k > E
  Tensor x = Gpu()->Alloc(DType::kBF16, {2, 136}), w = Gpu()->Alloc(DType::kBF16, {4 * 2 * 64 * 128});
  Tensor ids = Gpu()->Alloc(DType::kI32, {4}), sc = Gpu()->Alloc(DType::kI32, {K::MoeScratchInts(2, 2, 4)});
  Tensor act = Gpu()->Alloc(DType::kBF16, {4, 64}), y = Gpu()->Alloc(DType::kBF16, {4, 128});
  auto* xb = static_cast<K::bf16*>(x.data);
  auto* wb = static_cast<K::bf16*>(w.data);
  EXPECT_EQ(K::MoeGroup(ids.ptr<int32_t>(), 2, 5, 4, sc.ptr<int32_t>(), nullptr), cudaErrorInvalidValue);
  // x one element past a 16-byte boundary.
  EXPECT_EQ(K::MoeExperts(xb + 1, wb, wb, sc.ptr<int32_t>(), 2, 2, 4, 128, 64, static_cast<K::bf16*>(act.data),
                          static_cast<K::bf16*>(y.data), nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(K::MoeCombine(ids.ptr<int32_t>(), nullptr, sc.ptr<int32_t>(), static_cast<K::bf16*>(y.data), nullptr,
                          nullptr, 2, 2, 4, 128, xb, nullptr),
            cudaErrorInvalidValue);
}

// Projections past 16 rows run on cuBLASLt, whose kernels may assume aligned operands: slices at
// odd element offsets (2-byte aligned bf16, 4-byte aligned fp32 out) and an odd K must still
// give the reference's product, and plans cached for aligned pointers must not be reused.
TEST(GpuGemm, CublasLtOnMisalignedSlicesMatchesCpu) {
  SPECD_REQUIRE_GPU();
  CpuBackend cpu;
  const int64_t N = 40, M = 70, K = 130;
  for (int64_t off : {int64_t{0}, int64_t{1}, int64_t{3}}) {
    for (DType ot : {DType::kBF16, DType::kF32}) {
      const auto xv = RoundBf16(RandomVec(static_cast<size_t>(off + N * K), 31 + off, 1.f));
      const auto wv = RoundBf16(RandomVec(static_cast<size_t>(off + M * K), 41 + off, 0.1f));
      Tensor xc = cpu.Upload(xv.data() + off, DType::kF32, {N, K}, DType::kF32);
      Tensor wc = cpu.Upload(wv.data() + off, DType::kF32, {M, K}, DType::kF32);
      Tensor xg = Gpu()->Upload(xv.data(), DType::kF32, {off + N * K}, DType::kBF16).Slice(off, {N, K});
      Tensor wg = Gpu()->Upload(wv.data(), DType::kF32, {off + M * K}, DType::kBF16).Slice(off, {M, K});
      Tensor yc = cpu.Alloc(DType::kF32, {N, M});
      Tensor yg = Gpu()->Alloc(ot, {off + N * M}).Slice(off, {N, M});
      cpu.Gemm(xc, wc, yc);
      Gpu()->Gemm(xg, wg, yg);
      const Status st = Gpu()->TakeError();
      ASSERT_TRUE(st.ok()) << st.ToString() << " offset " << off;
      const auto want = cpu.DownloadF32(yc), got = Gpu()->DownloadF32(yg);
      double worst = 0;
      for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::fabs(static_cast<double>(got[i]) - want[i]));
      EXPECT_LT(worst, ot == DType::kF32 ? 1e-4 : 1e-2) << "offset " << off << (ot == DType::kF32 ? " fp32" : " bf16");
    }
  }
}

// The wide form (17-64 rows) against the 16-row form and single rows, bit for bit, for every
// output form, at K giving every K split (1, 2, 4, 8; 12288 is the largest shared-memory slice):
// a row's projection must not depend on how many rows share the call. And against the reference.
TEST(GpuGemm, WideRowsEqualNarrowRowsBitwise) {
  SPECD_REQUIRE_GPU();
  CpuBackend cpu;
  const KernelOptionOn wide(&BackendOptions::skinny_wide);  // opt-in (--batch-invariant)
  struct Case {
    int64_t M, K;
  };
  for (const Case c : {Case{136, 128}, Case{520, 1024}, Case{264, 2048}, Case{1040, 4096}, Case{200, 12288}}) {
    for (int64_t n : {int64_t{17}, int64_t{32}, int64_t{40}, int64_t{64}}) {
      const std::string what = "M=" + std::to_string(c.M) + " K=" + std::to_string(c.K) + " n=" + std::to_string(n);
      const auto xv = RoundBf16(RandomVec(static_cast<size_t>(n * c.K), 7 + n + c.K, 1.f));
      const auto wv = RoundBf16(RandomVec(static_cast<size_t>(2 * c.M * c.K), 9 + c.K, 1.f / std::sqrt(float(c.K))));
      Tensor x = Gpu()->Upload(xv.data(), DType::kF32, {n, c.K}, DType::kBF16);
      Tensor w = Gpu()->Upload(wv.data(), DType::kF32, {2 * c.M, c.K}, DType::kBF16);
      Tensor w1 = w.Rows(0, c.M);
      // Each form: all n rows, then rows 0..15 (16-row form) and single rows (decode form).
      auto run = [&](int form, int64_t r0, int64_t rows) {
        Tensor xr = x.Rows(r0, rows);
        Tensor out;
        if (form == 0 || form == 1) {
          out = Gpu()->Alloc(form == 0 ? DType::kBF16 : DType::kF32, {rows, c.M});
          Gpu()->Gemm(xr, w1, out);
        } else if (form == 2) {  // stacked: three projections in one weight stream
          out = Gpu()->Alloc(DType::kBF16, {rows, 2 * c.M});
          Tensor o1 = Gpu()->Alloc(DType::kBF16, {rows, c.M / 2}), o2 = Gpu()->Alloc(DType::kBF16, {rows, c.M / 2});
          Tensor o3 = Gpu()->Alloc(DType::kBF16, {rows, c.M});
          Gpu()->GemmMulti(xr, w, {&o1, &o2, &o3});
          std::vector<float> all;
          for (Tensor* o : {&o1, &o2, &o3}) {
            auto v = Gpu()->DownloadF32(*o);
            all.insert(all.end(), v.begin(), v.end());
          }
          return all;
        } else {  // gate/up with the SwiGLU epilogue
          out = Gpu()->Alloc(DType::kBF16, {rows, c.M});
          Gpu()->GemmSwiGlu(xr, w, out);
        }
        return Gpu()->DownloadF32(out);
      };
      for (int form = 0; form < 4; ++form) {
        const auto whole = run(form, 0, n), head = run(form, 0, 16);
        ASSERT_TRUE(Gpu()->TakeError().ok()) << what;
        // Per row of the output: the stacked form lays out o1 | o2 | o3, each [rows, width].
        auto row_of = [&](const std::vector<float>& v, int64_t rows, int64_t r) {
          std::vector<float> out;
          if (form == 2) {
            int64_t off = 0;
            for (int64_t width : {c.M / 2, c.M / 2, c.M}) {
              out.insert(out.end(), v.begin() + off + r * width, v.begin() + off + (r + 1) * width);
              off += rows * width;
            }
          } else {
            out.assign(v.begin() + r * c.M, v.begin() + (r + 1) * c.M);
          }
          return out;
        };
        for (int64_t r = 0; r < 16; ++r) {
          EXPECT_TRUE(row_of(whole, n, r) == row_of(head, 16, r)) << what << " form " << form << " row " << r;
        }
        for (int64_t r : {int64_t{0}, n / 2, n - 1}) {
          EXPECT_TRUE(row_of(whole, n, r) == row_of(run(form, r, 1), 1, 0))
              << what << " form " << form << " row " << r << " alone";
        }
        if (form == 1) {  // fp32 out against the reference
          Tensor xc = cpu.Upload(xv.data(), DType::kF32, {n, c.K}, DType::kF32);
          Tensor wc = cpu.Upload(wv.data(), DType::kF32, {c.M, c.K}, DType::kF32);
          Tensor yc = cpu.Alloc(DType::kF32, {n, c.M});
          cpu.Gemm(xc, wc, yc);
          EXPECT_LE(RelL2(whole, cpu.DownloadF32(yc)), 1e-4) << what;
        }
      }
    }
  }
}

TEST(GpuKernels, LaunchersRejectBadShapes) {
  SPECD_REQUIRE_GPU();
  CpuBackend cpu;
  Tensor x = Gpu()->Alloc(DType::kBF16, {4, 8}), w = Gpu()->Alloc(DType::kBF16, {5, 7}), y = Gpu()->Alloc(DType::kBF16, {4, 5});
  Gpu()->Gemm(x, w, y);  // K mismatch: 8 vs 7
  const Status s = Gpu()->TakeError();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("Gemm shape mismatch"), std::string::npos);
  EXPECT_TRUE(Gpu()->TakeError().ok());  // taken once
}

}  // namespace
}  // namespace specd::testing
