// Gated DeltaNet ops on the CPU (docs/DESIGN-NOTES.md, the forward): the chunked form against the recurrence,
// the backend op over a variable-length batch with value-head grouping, the conv window
// invariant, and the verify log + commit. References are computed here in double precision
// from the formulas of the spec, not with the code under test.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "runtime/backend.h"
#include "runtime/cpu_backend.h"
#include "test_util.h"

namespace specd::testing {
namespace {

std::vector<float> Uniform(size_t n, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

// Normalises `rows` vectors of length `d` (at stride `stride`) to unit L2 norm.
void L2Normalise(std::vector<float>& v, int64_t rows, int d, int64_t stride) {
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0;
    for (int i = 0; i < d; ++i) s += double{v[r * stride + i]} * v[r * stride + i];
    const double inv = 1.0 / std::sqrt(s);
    for (int i = 0; i < d; ++i) v[r * stride + i] = static_cast<float>(v[r * stride + i] * inv);
  }
}

// The recurrence of §5 step 7 in double: S <- e^g S; S <- S + k (beta (v - S^T k))^T; o = S^T q.
void NaiveStep(std::vector<double>& S, const float* k, const float* v, double g, double beta, int dk, int dv,
               const float* q, float* o) {
  const double decay = std::exp(g);
  for (auto& s : S) s *= decay;
  std::vector<double> m(dv, 0.0);
  for (int i = 0; i < dk; ++i)
    for (int j = 0; j < dv; ++j) m[j] += S[i * dv + j] * k[i];
  for (int i = 0; i < dk; ++i)
    for (int j = 0; j < dv; ++j) S[i * dv + j] += k[i] * beta * (v[j] - m[j]);
  for (int j = 0; j < dv; ++j) {
    double acc = 0;
    for (int i = 0; i < dk; ++i) acc += S[i * dv + j] * q[i];
    o[j] = static_cast<float>(acc);
  }
}

std::vector<float> ToF32(const std::vector<double>& v) { return {v.begin(), v.end()}; }

// ---------------------------------------------------------------------------------------------
// (a) cpu_ref::GdnChunked == a sequence of cpu_ref::GdnStep (and both == the double recurrence).

struct ChunkCase {
  int64_t T;
  int dk, dv;
};

class GdnChunkedVsRecurrent : public ::testing::TestWithParam<ChunkCase> {};

TEST_P(GdnChunkedVsRecurrent, OutputsAndFinalStateAgree) {
  const auto [T, dk, dv] = GetParam();
  std::mt19937 rng(static_cast<unsigned>(1000 + T * 7 + dk + dv));
  // Strided layouts as inside the backend (rows of a wider matrix).
  const int64_t qs = dk + 3, ks = dk + 5, vs = dv + 2, os = dv + 1;
  auto q = Uniform(T * qs, rng, -1.f, 1.f);
  auto k = Uniform(T * ks, rng, -1.f, 1.f);
  auto v = Uniform(T * vs, rng, -1.f, 1.f);
  L2Normalise(q, T, dk, qs);
  L2Normalise(k, T, dk, ks);
  for (auto& x : q) x /= std::sqrt(static_cast<float>(dk));
  auto g = Uniform(T, rng, -2.f, 0.f);
  for (auto& x : g) x = std::min(x, -1e-4f);  // [-2, 0)
  auto beta = Uniform(T, rng, 0.01f, 0.99f);
  const auto S0 = Uniform(static_cast<size_t>(dk * dv), rng, -1.f, 1.f);

  std::vector<float> S_chunk = S0, o_chunk(T * os, 0.f);
  cpu_ref::GdnChunked(S_chunk.data(), q.data(), k.data(), v.data(), g.data(), beta.data(), T, qs, ks, vs, dk, dv,
                      o_chunk.data(), os);

  std::vector<float> S_step = S0, o_step(T * os, 0.f);
  std::vector<double> S_ref(S0.begin(), S0.end());
  std::vector<float> o_ref(T * os, 0.f);
  for (int64_t t = 0; t < T; ++t) {
    cpu_ref::GdnStep(S_step.data(), &k[t * ks], &v[t * vs], g[t], beta[t], dk, dv, &q[t * qs], &o_step[t * os]);
    NaiveStep(S_ref, &k[t * ks], &v[t * vs], g[t], beta[t], dk, dv, &q[t * qs], &o_ref[t * os]);
  }
  // Compare the dv used entries of each output row.
  auto rows = [&](const std::vector<float>& o) {
    std::vector<float> r;
    for (int64_t t = 0; t < T; ++t) r.insert(r.end(), o.begin() + t * os, o.begin() + t * os + dv);
    return r;
  };
  const auto oc = rows(o_chunk), ost = rows(o_step), orf = rows(o_ref);
  EXPECT_LE(RelL2(oc, ost), 1e-5) << "output chunked vs step";
  EXPECT_LE(MaxRowRelErr(oc, ost, dv), 1e-5) << "output rows chunked vs step";
  EXPECT_LE(RelL2(S_chunk, S_step), 1e-5) << "final state chunked vs step";
  EXPECT_LE(RelL2(ost, orf), 1e-5) << "output step vs double reference";
  EXPECT_LE(RelL2(S_step, ToF32(S_ref)), 1e-5) << "state step vs double reference";
  EXPECT_LE(RelL2(oc, orf), 1e-5) << "output chunked vs double reference";
  // Padding columns of the strided output are not written.
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = dv; j < os; ++j) EXPECT_EQ(o_chunk[t * os + j], 0.f);
  }
}

INSTANTIATE_TEST_SUITE_P(Lengths, GdnChunkedVsRecurrent,
                         ::testing::Values(ChunkCase{1, 32, 32}, ChunkCase{3, 32, 32}, ChunkCase{63, 32, 32},
                                           ChunkCase{64, 32, 32}, ChunkCase{65, 32, 32}, ChunkCase{200, 32, 32},
                                           ChunkCase{1, 16, 24}, ChunkCase{3, 16, 24}, ChunkCase{63, 16, 24},
                                           ChunkCase{64, 16, 24}, ChunkCase{65, 16, 24}, ChunkCase{200, 16, 24}),
                         [](const auto& info) {
                           return "T" + std::to_string(info.param.T) + "_dk" + std::to_string(info.param.dk) +
                                  "_dv" + std::to_string(info.param.dv);
                         });

// ---------------------------------------------------------------------------------------------
// Helpers for the backend ops.

GdnLayerState MakeState(Backend& be, const GdnDims& d, int slots, int log_cap) {
  const int64_t S = slots, L = log_cap, C = d.conv_dim();
  GdnLayerState st;
  st.conv = be.Alloc(DType::kF32, {S, d.conv_kernel, C});
  st.rec = be.Alloc(DType::kF32, {S, d.num_v_heads, d.head_k, d.head_v});
  st.log_raw = be.Alloc(DType::kF32, {S, L, C});
  st.log_k = be.Alloc(DType::kF32, {S, L, d.num_k_heads, d.head_k});
  st.log_v = be.Alloc(DType::kF32, {S, L, d.num_v_heads, d.head_v});
  st.log_g = be.Alloc(DType::kF32, {S, L, d.num_v_heads});
  st.log_beta = be.Alloc(DType::kF32, {S, L, d.num_v_heads});
  st.ckpt_conv = be.Alloc(DType::kF32, {S, d.conv_kernel, C});
  st.ckpt_rec = be.Alloc(DType::kF32, {S, d.num_v_heads, d.head_k, d.head_v});
  return st;
}

Tensor Clone(Backend& be, const Tensor& t) {
  if (!t.defined()) return {};
  Tensor c = be.Alloc(t.dtype, t.shape);
  be.CopyRows(t, c);
  return c;
}

GdnLayerState Clone(Backend& be, const GdnLayerState& s) {
  GdnLayerState c;
  c.conv = Clone(be, s.conv);
  c.rec = Clone(be, s.rec);
  c.log_raw = Clone(be, s.log_raw);
  c.log_k = Clone(be, s.log_k);
  c.log_v = Clone(be, s.log_v);
  c.log_g = Clone(be, s.log_g);
  c.log_beta = Clone(be, s.log_beta);
  c.ckpt_conv = Clone(be, s.ckpt_conv);
  c.ckpt_rec = Clone(be, s.ckpt_rec);
  return c;
}

Tensor Up(Backend& be, const std::vector<float>& v, std::vector<int64_t> shape) {
  return be.Upload(v.data(), DType::kF32, std::move(shape), DType::kF32);
}

// One slot's part of a [slots, ...] state tensor, as fp32.
std::vector<float> SlotOf(Backend& be, const Tensor& t, int slot) {
  auto all = be.DownloadF32(t);
  const int64_t w = t.numel() / t.dim(0);
  return {all.begin() + slot * w, all.begin() + (slot + 1) * w};
}

BatchInfo MakeBatch(const std::vector<SeqSpan>& spans) {
  BatchInfo b;
  b.seqs = spans;
  for (const auto& s : spans) {
    b.num_tokens = std::max(b.num_tokens, s.offset + s.len);
    b.max_len = std::max(b.max_len, s.len);
  }
  return b;
}

SeqSpan Span(int slot, int64_t offset, int64_t len, StateMode mode = StateMode::kUpdate, int log_offset = 0) {
  SeqSpan s;
  s.slot = slot;
  s.offset = offset;
  s.len = len;
  s.mode = mode;
  s.log_offset = log_offset;
  return s;
}

// Rows [r0, r0 + n) of a row-major matrix with `w` columns.
std::vector<float> RowsOf(const std::vector<float>& m, int64_t r0, int64_t n, int64_t w) {
  return {m.begin() + r0 * w, m.begin() + (r0 + n) * w};
}

// ---------------------------------------------------------------------------------------------
// (b) GatedDeltaRule through the backend: batch == alone == token by token == double reference.

class GdnBackendRule : public ::testing::Test {
 protected:
  static constexpr int kSlots = 3;
  GdnDims d_{/*Hk=*/2, /*Hv=*/4, /*dk=*/32, /*dv=*/16, /*K=*/4};
  std::unique_ptr<Backend> be_ = MakeCpuBackend();

  struct Inputs {
    std::vector<float> y, braw, araw;  // [T, C], [T, Hv], [T, Hv]
    int64_t T = 0;
  };
  Inputs MakeInputs(int64_t T, std::mt19937& rng) {
    Inputs in;
    in.T = T;
    in.y = Uniform(T * d_.conv_dim(), rng, -1.f, 1.f);
    in.braw = Uniform(T * d_.num_v_heads, rng, -3.f, 3.f);
    in.araw = Uniform(T * d_.num_v_heads, rng, -3.f, 3.f);
    return in;
  }

  // Runs the op over `seqs` (each on its slot, concatenated) from `st`; returns o [N, Hv*dv].
  std::vector<float> Run(GdnLayerState& st, const std::vector<std::pair<int, const Inputs*>>& seqs,
                         const std::vector<float>& a_log, const std::vector<float>& dt_bias) {
    std::vector<float> y, braw, araw;
    std::vector<SeqSpan> spans;
    int64_t off = 0;
    for (const auto& [slot, in] : seqs) {
      y.insert(y.end(), in->y.begin(), in->y.end());
      braw.insert(braw.end(), in->braw.begin(), in->braw.end());
      araw.insert(araw.end(), in->araw.begin(), in->araw.end());
      spans.push_back(Span(slot, off, in->T));
      off += in->T;
    }
    const int64_t C = d_.conv_dim(), Hv = d_.num_v_heads, Vd = Hv * d_.head_v;
    Tensor ty = Up(*be_, y, {off, C}), tb = Up(*be_, braw, {off, Hv}), ta = Up(*be_, araw, {off, Hv});
    Tensor tal = Up(*be_, a_log, {Hv}), tdt = Up(*be_, dt_bias, {Hv});
    Tensor o = be_->Alloc(DType::kF32, {off, Vd});
    be_->GatedDeltaRule(ty, tb, ta, tal, tdt, d_, st, MakeBatch(spans), o);
    return be_->DownloadF32(o);
  }

  // The double-precision reference of §5 steps 5–7 with value head h reading key head h / r.
  std::vector<float> Reference(std::vector<double>& S, const Inputs& in, const std::vector<float>& a_log,
                               const std::vector<float>& dt_bias) {
    const int hk = d_.num_k_heads, hv = d_.num_v_heads, dk = d_.head_k, dv = d_.head_v, r = hv / hk;
    const int64_t C = d_.conv_dim();
    std::vector<float> out(in.T * hv * dv);
    for (int64_t t = 0; t < in.T; ++t) {
      const float* yr = in.y.data() + t * C;
      for (int h = 0; h < hv; ++h) {
        const int kh = h / r;
        std::vector<float> q(yr + kh * dk, yr + (kh + 1) * dk);
        std::vector<float> k(yr + hk * dk + kh * dk, yr + hk * dk + (kh + 1) * dk);
        std::vector<float> v(yr + 2 * hk * dk + h * dv, yr + 2 * hk * dk + (h + 1) * dv);
        double sq = 0, sk = 0;
        for (int i = 0; i < dk; ++i) {
          sq += double{q[i]} * q[i];
          sk += double{k[i]} * k[i];
        }
        for (int i = 0; i < dk; ++i) {
          q[i] = static_cast<float>(q[i] / std::sqrt(sq + 1e-6) / std::sqrt(double(dk)));
          k[i] = static_cast<float>(k[i] / std::sqrt(sk + 1e-6));
        }
        const double x = double{in.araw[t * hv + h]} + dt_bias[h];
        const double softplus = x > 20 ? x : std::log1p(std::exp(x));
        const double g = -std::exp(double{a_log[h]}) * softplus;
        const double beta = 1.0 / (1.0 + std::exp(-double{in.braw[t * hv + h]}));
        std::vector<double> Sh(S.begin() + h * dk * dv, S.begin() + (h + 1) * dk * dv);
        NaiveStep(Sh, k.data(), v.data(), g, beta, dk, dv, q.data(), &out[(t * hv + h) * dv]);
        std::copy(Sh.begin(), Sh.end(), S.begin() + h * dk * dv);
      }
    }
    return out;
  }
};

TEST_F(GdnBackendRule, BatchEqualsAloneTokenByTokenAndReference) {
  std::mt19937 rng(42);
  const int hv = d_.num_v_heads, dv = d_.head_v;
  const int64_t Vd = int64_t{hv} * dv;
  const auto a_log = Uniform(hv, rng, -1.f, 1.f);
  const auto dt_bias = Uniform(hv, rng, -1.f, 1.f);
  GdnLayerState init = MakeState(*be_, d_, kSlots, 4);
  {
    auto r = Uniform(static_cast<size_t>(init.rec.numel()), rng, -0.5f, 0.5f);
    std::memcpy(init.rec.data, r.data(), init.rec.nbytes());
  }
  // Sequence A (slot 2) crosses a 64-token chunk; B (slot 0) is short.
  const Inputs A = MakeInputs(70, rng), B = MakeInputs(5, rng);
  const int slotA = 2, slotB = 0;
  const std::vector<float> rec0 = be_->DownloadF32(init.rec);
  const int64_t rw = init.rec.numel() / kSlots;

  GdnLayerState batched = Clone(*be_, init);
  const auto ob = Run(batched, {{slotA, &A}, {slotB, &B}}, a_log, dt_bias);
  const auto obA = RowsOf(ob, 0, A.T, Vd), obB = RowsOf(ob, A.T, B.T, Vd);

  for (const auto& [slot, in, o_batched] :
       {std::tuple{slotA, &A, obA}, std::tuple{slotB, &B, obB}}) {
    SCOPED_TRACE("slot " + std::to_string(slot));
    // Alone, one call.
    GdnLayerState alone = Clone(*be_, init);
    const auto oa = Run(alone, {{slot, in}}, a_log, dt_bias);
    EXPECT_LE(MaxRowRelErr(o_batched, oa, Vd), 1e-5);
    EXPECT_LE(RelL2(SlotOf(*be_, batched.rec, slot), SlotOf(*be_, alone.rec, slot)), 1e-5);
    // Alone, one token per call (the recurrent form).
    GdnLayerState steps = Clone(*be_, init);
    std::vector<float> os;
    for (int64_t t = 0; t < in->T; ++t) {
      Inputs one;
      one.T = 1;
      one.y = RowsOf(in->y, t, 1, d_.conv_dim());
      one.braw = RowsOf(in->braw, t, 1, hv);
      one.araw = RowsOf(in->araw, t, 1, hv);
      const auto o1 = Run(steps, {{slot, &one}}, a_log, dt_bias);
      os.insert(os.end(), o1.begin(), o1.end());
    }
    // The chunked form (T > 1) against the recurrence: relative L2 over the span. (Per row, the
    // few low-norm outputs late in a 64-token chunk reach ~7e-6, at ~5e-7 absolute.)
    EXPECT_LE(RelL2(oa, os), 1e-5) << "T-token call vs T single-token calls";
    EXPECT_LE(RelL2(SlotOf(*be_, alone.rec, slot), SlotOf(*be_, steps.rec, slot)), 1e-5);
    // Independent double-precision reference with the h / r key-head grouping.
    std::vector<double> S(rec0.begin() + slot * rw, rec0.begin() + (slot + 1) * rw);
    const auto oref = Reference(S, *in, a_log, dt_bias);
    EXPECT_LE(RelL2(o_batched, oref), 1e-5) << "batched vs double reference";
    EXPECT_LE(MaxRowRelErr(os, oref, Vd), 1e-5) << "single-token calls vs double reference, per row";
    EXPECT_LE(RelL2(SlotOf(*be_, batched.rec, slot), ToF32(S)), 1e-5);
  }
  // The slot in no span keeps its state bit for bit.
  EXPECT_EQ(SlotOf(*be_, batched.rec, 1), std::vector<float>(rec0.begin() + rw, rec0.begin() + 2 * rw));
}

TEST_F(GdnBackendRule, ValueHeadsReadTheirGroupsKeyHead) {
  // Perturbing key head 1 must change value heads 2 and 3 only (r = Hv / Hk = 2).
  std::mt19937 rng(7);
  const int hv = d_.num_v_heads, dk = d_.head_k, dv = d_.head_v;
  const auto a_log = Uniform(hv, rng, -1.f, 1.f);
  const auto dt_bias = Uniform(hv, rng, -1.f, 1.f);
  const Inputs A = MakeInputs(6, rng);
  Inputs A2 = A;
  for (int64_t t = 0; t < A.T; ++t) {
    for (int i = 0; i < dk; ++i) A2.y[t * d_.conv_dim() + d_.num_k_heads * dk + 1 * dk + i] += 0.5f;  // k head 1
  }
  GdnLayerState s1 = MakeState(*be_, d_, 1, 4), s2 = MakeState(*be_, d_, 1, 4);
  const auto o1 = Run(s1, {{0, &A}}, a_log, dt_bias), o2 = Run(s2, {{0, &A2}}, a_log, dt_bias);
  for (int64_t t = 0; t < A.T; ++t) {
    for (int h = 0; h < hv; ++h) {
      double diff = 0;
      for (int j = 0; j < dv; ++j) diff = std::max(diff, double{std::fabs(o1[(t * hv + h) * dv + j] - o2[(t * hv + h) * dv + j])});
      if (h < 2) {
        EXPECT_EQ(diff, 0.0) << "t " << t << " head " << h;
      } else {
        EXPECT_GT(diff, 1e-6) << "t " << t << " head " << h;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// (c) CausalConvSilu: window == last K raw rows; outputs == direct zero-padded causal conv.

struct ConvCase {
  int n;
};
class GdnConvState : public ::testing::TestWithParam<ConvCase> {};

TEST_P(GdnConvState, WindowHoldsLastKRawRowsAndOutputsMatch) {
  const int n = GetParam().n;
  const GdnDims d{/*Hk=*/1, /*Hv=*/2, /*dk=*/4, /*dv=*/4, /*K=*/4};
  const int K = d.conv_kernel;
  const int64_t C = d.conv_dim();
  auto be = MakeCpuBackend();
  std::mt19937 rng(static_cast<unsigned>(100 + n));
  const auto w = Uniform(C * K, rng, -1.f, 1.f);
  Tensor tw = Up(*be, w, {C, K});
  // Two slots fed in the same calls with different data and different chunkings.
  const std::vector<int> slots = {1, 0};
  const std::vector<std::vector<int64_t>> patterns = {{1, 2, 3}, {3, 1}};
  std::vector<std::vector<float>> x(2), y(2);
  for (int s = 0; s < 2; ++s) x[s] = Uniform(n * C, rng, -2.f, 2.f);
  GdnLayerState st = MakeState(*be, d, 2, 4);
  std::vector<int64_t> fed(2, 0);
  std::vector<size_t> step(2, 0);
  while (fed[0] < n || fed[1] < n) {
    std::vector<float> p;
    std::vector<SeqSpan> spans;
    int64_t off = 0;
    for (int s = 0; s < 2; ++s) {
      if (fed[s] >= n) continue;
      const auto& pat = patterns[s];
      const int64_t len = std::min<int64_t>(pat[step[s]++ % pat.size()], n - fed[s]);
      p.insert(p.end(), x[s].begin() + fed[s] * C, x[s].begin() + (fed[s] + len) * C);
      SeqSpan sp = Span(slots[s], off, len);
      sp.n_past = fed[s];
      spans.push_back(sp);
      off += len;
    }
    Tensor tp = Up(*be, p, {off, C});
    Tensor ty = be->Alloc(DType::kF32, {off, C});
    be->CausalConvSilu(tp, tw, d, st, MakeBatch(spans), ty);
    const auto out = be->DownloadF32(ty);
    size_t i = 0;
    for (int s = 0; s < 2; ++s) {
      if (fed[s] >= n) continue;
      const auto& sp = spans[i++];
      y[s].insert(y[s].end(), out.begin() + sp.offset * C, out.begin() + (sp.offset + sp.len) * C);
      fed[s] += sp.len;
    }
  }
  for (int s = 0; s < 2; ++s) {
    SCOPED_TRACE("slot " + std::to_string(slots[s]));
    // Window: raw rows n-K .. n-1, oldest first, zero where the index is negative.
    std::vector<float> want(K * C, 0.f);
    for (int j = 0; j < K; ++j) {
      const int src = n - K + j;
      if (src >= 0) std::copy(x[s].begin() + src * C, x[s].begin() + (src + 1) * C, want.begin() + j * C);
    }
    EXPECT_EQ(SlotOf(*be, st.conv, slots[s]), want);
    // Outputs: silu(sum_j w[c, j] x[t - (K-1) + j, c]) with zero padding.
    std::vector<float> ref(n * C);
    for (int t = 0; t < n; ++t) {
      for (int64_t c = 0; c < C; ++c) {
        double acc = 0;
        for (int j = 0; j < K; ++j) {
          const int src = t - (K - 1) + j;
          if (src >= 0) acc += double{w[c * K + j]} * x[s][src * C + c];
        }
        ref[t * C + c] = static_cast<float>(acc / (1.0 + std::exp(-acc)));
      }
    }
    EXPECT_LE(MaxRowRelErr(y[s], ref, C), 1e-6);
  }
}

INSTANTIATE_TEST_SUITE_P(Tokens, GdnConvState,
                         ::testing::Values(ConvCase{1}, ConvCase{2}, ConvCase{3}, ConvCase{4}, ConvCase{10}),
                         [](const auto& info) { return "n" + std::to_string(info.param.n); });

// ---------------------------------------------------------------------------------------------
// (d) Verify log (kLog) leaves the state untouched; GdnCommit(keep) == feeding `keep` tokens.

class GdnLogCommit : public ::testing::Test {
 protected:
  static constexpr int kSlot = 1, kOther = 0, kT = 5, kLogCap = 8;
  GdnDims d_{/*Hk=*/2, /*Hv=*/4, /*dk=*/16, /*dv=*/8, /*K=*/4};
  std::unique_ptr<Backend> be_ = MakeCpuBackend();
  std::mt19937 rng_{2024};
  std::vector<float> conv_w_, a_log_, dt_bias_;

  struct Tokens {
    std::vector<float> p, braw, araw;  // [T, C], [T, Hv], [T, Hv]
    int64_t T = 0;
    Tokens Prefix(int64_t n) const {
      const int64_t C = static_cast<int64_t>(p.size()) / T, hv = static_cast<int64_t>(braw.size()) / T;
      return {RowsOf(p, 0, n, C), RowsOf(braw, 0, n, hv), RowsOf(araw, 0, n, hv), n};
    }
  };
  Tokens Make(int64_t T) {
    return {Uniform(T * d_.conv_dim(), rng_, -1.f, 1.f), Uniform(T * d_.num_v_heads, rng_, -3.f, 3.f),
            Uniform(T * d_.num_v_heads, rng_, -3.f, 3.f), T};
  }

  void SetUp() override {
    conv_w_ = Uniform(d_.conv_dim() * d_.conv_kernel, rng_, -0.6f, 0.6f);
    a_log_ = Uniform(d_.num_v_heads, rng_, -1.f, 1.f);
    dt_bias_ = Uniform(d_.num_v_heads, rng_, -1.f, 1.f);
  }

  // What the model's GDN layer does with the state: conv + SiLU, then the delta rule.
  std::vector<float> Feed(GdnLayerState& st, int slot, const Tokens& x, StateMode mode, int log_offset = 0) {
    const int64_t C = d_.conv_dim(), Hv = d_.num_v_heads, T = x.T;
    Tensor p = Up(*be_, x.p, {T, C}), b = Up(*be_, x.braw, {T, Hv}), a = Up(*be_, x.araw, {T, Hv});
    Tensor w = Up(*be_, conv_w_, {C, d_.conv_kernel});
    Tensor al = Up(*be_, a_log_, {Hv}), dt = Up(*be_, dt_bias_, {Hv});
    const BatchInfo bi = MakeBatch({Span(slot, 0, T, mode, log_offset)});
    Tensor y = be_->Alloc(DType::kF32, {T, C});
    be_->CausalConvSilu(p, w, d_, st, bi, y);
    Tensor o = be_->Alloc(DType::kF32, {T, Hv * d_.head_v});
    be_->GatedDeltaRule(y, b, a, al, dt, d_, st, bi, o);
    return be_->DownloadF32(o);
  }

  // A state whose slots both have history (non-zero window and recurrent state).
  GdnLayerState WithHistory() {
    GdnLayerState st = MakeState(*be_, d_, 2, kLogCap);
    Feed(st, kSlot, Make(6), StateMode::kUpdate);
    Feed(st, kOther, Make(3), StateMode::kUpdate);
    return st;
  }

  void ExpectSlotState(const GdnLayerState& got, const GdnLayerState& want, int slot, double tol) {
    EXPECT_LE(RelL2(SlotOf(*be_, got.conv, slot), SlotOf(*be_, want.conv, slot)), tol) << "conv window";
    EXPECT_LE(RelL2(SlotOf(*be_, got.rec, slot), SlotOf(*be_, want.rec, slot)), tol) << "recurrent state";
  }
};

TEST_F(GdnLogCommit, LogModeLeavesStateUntouchedAndGivesUpdateOutputs) {
  const GdnLayerState s0 = WithHistory();
  auto nonzero = [](const std::vector<float>& v) {
    return std::any_of(v.begin(), v.end(), [](float f) { return f != 0.f; });
  };
  ASSERT_TRUE(nonzero(SlotOf(*be_, s0.rec, kSlot)));
  ASSERT_TRUE(nonzero(SlotOf(*be_, s0.conv, kSlot)));
  const Tokens x = Make(kT);
  GdnLayerState logged = Clone(*be_, s0);
  const auto o_log = Feed(logged, kSlot, x, StateMode::kLog);
  EXPECT_EQ(be_->DownloadF32(logged.conv), be_->DownloadF32(s0.conv));
  EXPECT_EQ(be_->DownloadF32(logged.rec), be_->DownloadF32(s0.rec));
  // The log holds the raw rows of the span.
  const int64_t C = d_.conv_dim();
  const auto raw = SlotOf(*be_, logged.log_raw, kSlot);
  EXPECT_EQ(std::vector<float>(raw.begin(), raw.begin() + kT * C), x.p);

  GdnLayerState updated = Clone(*be_, s0);
  const auto o_upd = Feed(updated, kSlot, x, StateMode::kUpdate);
  EXPECT_LE(MaxRowRelErr(o_log, o_upd, d_.num_v_heads * d_.head_v), 1e-6);
  // And the update did move the state (the check above is not vacuous).
  EXPECT_GT(RelL2(SlotOf(*be_, updated.rec, kSlot), SlotOf(*be_, s0.rec, kSlot)), 1e-3);
}

TEST_F(GdnLogCommit, CommitKeepReproducesFeedingThePrefix) {
  const GdnLayerState s0 = WithHistory();
  const Tokens x = Make(kT);
  GdnLayerState logged = Clone(*be_, s0);
  Feed(logged, kSlot, x, StateMode::kLog);
  for (int keep : {0, 1, kT - 1, kT}) {
    SCOPED_TRACE("keep " + std::to_string(keep));
    GdnLayerState c = Clone(*be_, logged);
    be_->GdnCommit(c, d_, kSlot, keep, /*from_checkpoint=*/false);
    GdnLayerState ref = Clone(*be_, s0);
    if (keep > 0) Feed(ref, kSlot, x.Prefix(keep), StateMode::kUpdate);
    ExpectSlotState(c, ref, kSlot, 1e-6);
    // The other slot is untouched.
    EXPECT_EQ(SlotOf(*be_, c.rec, kOther), SlotOf(*be_, s0.rec, kOther));
    EXPECT_EQ(SlotOf(*be_, c.conv, kOther), SlotOf(*be_, s0.conv, kOther));
    // The committed state continues like the reference: decode one more token on both.
    const Tokens next = Make(1);
    const auto oc = Feed(c, kSlot, next, StateMode::kUpdate);
    const auto orf = Feed(ref, kSlot, next, StateMode::kUpdate);
    EXPECT_LE(RelL2(oc, orf), 1e-5);
  }
}

TEST_F(GdnLogCommit, DraftStepsRollBackFromCheckpoint) {
  const GdnLayerState s0 = WithHistory();
  const Tokens x = Make(kT);
  for (int keep : {0, 1, kT - 1, kT}) {
    SCOPED_TRACE("keep " + std::to_string(keep));
    GdnLayerState c = Clone(*be_, s0);
    be_->GdnCheckpoint(c, kSlot);
    // Drafts: one token per call, advancing and logging.
    for (int t = 0; t < kT; ++t) {
      Tokens one{RowsOf(x.p, t, 1, d_.conv_dim()), RowsOf(x.braw, t, 1, d_.num_v_heads),
                 RowsOf(x.araw, t, 1, d_.num_v_heads), 1};
      Feed(c, kSlot, one, StateMode::kUpdateLog, t);
    }
    GdnLayerState all = Clone(*be_, s0);
    Feed(all, kSlot, x, StateMode::kUpdate);
    ExpectSlotState(c, all, kSlot, 1e-5);  // kUpdateLog advanced like kUpdate
    be_->GdnCommit(c, d_, kSlot, keep, /*from_checkpoint=*/true);
    GdnLayerState ref = Clone(*be_, s0);
    if (keep > 0) Feed(ref, kSlot, x.Prefix(keep), StateMode::kUpdate);
    ExpectSlotState(c, ref, kSlot, 1e-6);
  }
}

}  // namespace
}  // namespace specd::testing
