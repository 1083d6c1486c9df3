// Gated DeltaNet on the CPU: causal conv with state, the chunked and recurrent forms of the gated
// delta rule, and the log replay that commits a verify's accepted prefix.
#include <cmath>
#include <cstring>
#include <vector>

#include "runtime/cpu_backend.h"

namespace specd {
namespace cpu_ref {

void GdnStep(float* S, const float* k, const float* v, float g, float beta, int dk, int dv,
             const float* q, float* o) {
  const float decay = std::exp(g);
  for (int i = 0; i < dk * dv; ++i) S[i] *= decay;
  // This runs once per token and head: no heap allocation for the usual head sizes.
  float stack_delta[512];
  std::vector<float> heap_delta;
  float* delta = stack_delta;
  if (dv > 512) {
    heap_delta.resize(static_cast<size_t>(dv));
    delta = heap_delta.data();
  }
  for (int j = 0; j < dv; ++j) delta[j] = 0.f;
  for (int i = 0; i < dk; ++i) {
    const float ki = k[i];
    const float* row = S + i * dv;
    for (int j = 0; j < dv; ++j) delta[j] += row[j] * ki;
  }
  for (int j = 0; j < dv; ++j) delta[j] = beta * (v[j] - delta[j]);
  for (int i = 0; i < dk; ++i) {
    float* row = S + i * dv;
    const float ki = k[i];
    for (int j = 0; j < dv; ++j) row[j] += ki * delta[j];
  }
  if (q != nullptr) {
    for (int j = 0; j < dv; ++j) o[j] = 0.f;
    for (int i = 0; i < dk; ++i) {
      const float* row = S + i * dv;
      for (int j = 0; j < dv; ++j) o[j] += row[j] * q[i];
    }
  }
}

void GdnChunked(float* S, const float* q, const float* k, const float* v, const float* g,
                const float* beta, int64_t T, int64_t q_stride, int64_t k_stride, int64_t v_stride,
                int dk, int dv, float* o, int64_t o_stride) {
  constexpr int64_t kChunk = 64;
  // Rows past T in the last chunk would be zero-padded in the reference; they are inert
  // (beta = 0 writes nothing, g = 0 does not decay), so the last chunk is simply shorter.
  std::vector<float> gam(kChunk), Lm(kChunk * kChunk), U(kChunk * dv), W(kChunk * dk),
      Vp(kChunk * dv), A(kChunk * kChunk);
  for (int64_t c0 = 0; c0 < T; c0 += kChunk) {
    const int64_t L = std::min(kChunk, T - c0);
    float acc = 0.f;
    for (int64_t i = 0; i < L; ++i) {
      acc += g[c0 + i];
      gam[i] = acc;
    }
    auto K = [&](int64_t i) { return k + (c0 + i) * k_stride; };
    auto Q = [&](int64_t i) { return q + (c0 + i) * q_stride; };
    auto Vv = [&](int64_t i) { return v + (c0 + i) * v_stride; };
    auto dot = [](const float* a, const float* b2, int n) {
      float s = 0.f;
      for (int i = 0; i < n; ++i) s += a[i] * b2[i];
      return s;
    };
    // Strictly lower L_ij = beta_i (k_i·k_j) exp(gam_i - gam_j); A_ij = (q_i·k_j) exp(gam_i - gam_j), j <= i.
    for (int64_t i = 0; i < L; ++i) {
      for (int64_t j = 0; j <= i; ++j) {
        const float decay = std::exp(gam[i] - gam[j]);
        if (j < i) Lm[i * kChunk + j] = beta[c0 + i] * dot(K(i), K(j), dk) * decay;
        A[i * kChunk + j] = dot(Q(i), K(j), dk) * decay;
      }
    }
    // Forward substitution: (I + L) U = diag(beta) V, (I + L) W = diag(beta e^gam) K.
    for (int64_t i = 0; i < L; ++i) {
      const float bi = beta[c0 + i];
      const float be = bi * std::exp(gam[i]);
      for (int j = 0; j < dv; ++j) U[i * dv + j] = bi * Vv(i)[j];
      for (int j = 0; j < dk; ++j) W[i * dk + j] = be * K(i)[j];
      for (int64_t m = 0; m < i; ++m) {
        const float l = Lm[i * kChunk + m];
        for (int j = 0; j < dv; ++j) U[i * dv + j] -= l * U[m * dv + j];
        for (int j = 0; j < dk; ++j) W[i * dk + j] -= l * W[m * dk + j];
      }
    }
    // V' = U - W S
    for (int64_t i = 0; i < L; ++i) {
      for (int j = 0; j < dv; ++j) Vp[i * dv + j] = U[i * dv + j];
      for (int a = 0; a < dk; ++a) {
        const float w = W[i * dk + a];
        const float* row = S + a * dv;
        for (int j = 0; j < dv; ++j) Vp[i * dv + j] -= w * row[j];
      }
    }
    // O = diag(e^gam) Q S + A V'
    for (int64_t i = 0; i < L; ++i) {
      float* oi = o + (c0 + i) * o_stride;
      for (int j = 0; j < dv; ++j) oi[j] = 0.f;
      for (int a = 0; a < dk; ++a) {
        const float qa = Q(i)[a];
        const float* row = S + a * dv;
        for (int j = 0; j < dv; ++j) oi[j] += qa * row[j];
      }
      const float eg = std::exp(gam[i]);
      for (int j = 0; j < dv; ++j) oi[j] *= eg;
      for (int64_t m = 0; m <= i; ++m) {
        const float am = A[i * kChunk + m];
        for (int j = 0; j < dv; ++j) oi[j] += am * Vp[m * dv + j];
      }
    }
    // S <- e^{gam_L} S + sum_i e^{gam_L - gam_i} k_i V'_i^T
    const float gl = gam[L - 1];
    const float egl = std::exp(gl);
    for (int i = 0; i < dk * dv; ++i) S[i] *= egl;
    for (int64_t i = 0; i < L; ++i) {
      const float w = std::exp(gl - gam[i]);
      for (int a = 0; a < dk; ++a) {
        const float ka = w * K(i)[a];
        float* row = S + a * dv;
        for (int j = 0; j < dv; ++j) row[j] += ka * Vp[i * dv + j];
      }
    }
  }
}

}  // namespace cpu_ref

void CpuBackend::CausalConvSilu(const Tensor& p, const Tensor& w, const GdnDims& d, GdnLayerState& st,
                                const BatchInfo& b, Tensor& y) {
  const int K = d.conv_kernel;
  const int64_t C = d.conv_dim();
  const float* wp = w.ptr<float>();  // [C, K]
  for (const auto& s : b.seqs) {
    float* win = st.conv.ptr<float>() + int64_t{s.slot} * K * C;
    // x̃ = [window (K rows) | p rows of the span]; output t uses rows t+1 .. t+K of x̃, so the
    // cached context continues the sequence and a fresh (zero) window equals zero padding.
    auto row = [&](int64_t r) -> const float* {
      return r < K ? win + r * C : p.ptr<float>() + (s.offset + r - K) * C;
    };
#pragma omp parallel for if (s.len * C > (1 << 18))
    for (int64_t t = 0; t < s.len; ++t) {
      float* yo = y.ptr<float>() + (s.offset + t) * C;
      for (int64_t c = 0; c < C; ++c) {
        float acc = 0.f;
        for (int j = 0; j < K; ++j) acc += wp[c * K + j] * row(t + 1 + j)[c];
        yo[c] = cpu_ref::Silu(acc);
      }
    }
    if (WritesLog(s.mode)) {
      float* lg = st.log_raw.ptr<float>() + (int64_t{s.slot} * st.log_raw.dim(1) + s.log_offset) * C;
      std::memcpy(lg, p.ptr<float>() + s.offset * C, sizeof(float) * s.len * C);
    }
    if (WritesState(s.mode)) {
      std::vector<float> nw(static_cast<size_t>(K * C));
      for (int j = 0; j < K; ++j) std::memcpy(nw.data() + j * C, row(s.len + j), sizeof(float) * C);
      std::memcpy(win, nw.data(), sizeof(float) * K * C);
    }
  }
}

void CpuBackend::GatedDeltaRule(const Tensor& y, const Tensor& braw, const Tensor& araw,
                                const Tensor& a_log, const Tensor& dt_bias, const GdnDims& d,
                                GdnLayerState& st, const BatchInfo& b, Tensor& o) {
  const int hk = d.num_k_heads, hv = d.num_v_heads, dk = d.head_k, dv = d.head_v;
  const int r = hv / hk;
  const int64_t C = d.conv_dim();
  const int64_t N = b.num_tokens;
  // Per-token fp32 q, k (l2-normalised, q scaled by dk^-1/2), v, g, beta.
  std::vector<float> q(N * hk * dk), k(N * hk * dk), v(N * hv * dv), g(N * hv), beta(N * hv);
  const float qscale = 1.f / std::sqrt(static_cast<float>(dk));
#pragma omp parallel for if (N * C > (1 << 18))
  for (int64_t t = 0; t < N; ++t) {
    const float* yr = y.ptr<float>() + t * C;
    for (int h = 0; h < hk; ++h) {
      const float* qs = yr + h * dk;
      const float* ks = yr + hk * dk + h * dk;
      float sq = 0.f, sk = 0.f;
      for (int i = 0; i < dk; ++i) {
        sq += qs[i] * qs[i];
        sk += ks[i] * ks[i];
      }
      const float iq = 1.f / std::sqrt(sq + 1e-6f), ik = 1.f / std::sqrt(sk + 1e-6f);
      for (int i = 0; i < dk; ++i) {
        q[(t * hk + h) * dk + i] = qs[i] * iq * qscale;
        k[(t * hk + h) * dk + i] = ks[i] * ik;
      }
    }
    std::memcpy(&v[t * hv * dv], yr + 2 * hk * dk, sizeof(float) * hv * dv);
    for (int h = 0; h < hv; ++h) {
      beta[t * hv + h] = cpu_ref::Sigmoid(braw.ptr<float>()[t * hv + h]);
      g[t * hv + h] = -std::exp(a_log.ptr<float>()[h]) *
                      cpu_ref::Softplus(araw.ptr<float>()[t * hv + h] + dt_bias.ptr<float>()[h]);
    }
  }
  const int64_t L = st.log_k.defined() ? st.log_k.dim(1) : 0;
  for (const auto& s : b.seqs) {
    if (!WritesLog(s.mode)) continue;
    const int64_t base = int64_t{s.slot} * L + s.log_offset;
    std::memcpy(st.log_k.ptr<float>() + base * hk * dk, &k[s.offset * hk * dk], sizeof(float) * s.len * hk * dk);
    std::memcpy(st.log_v.ptr<float>() + base * hv * dv, &v[s.offset * hv * dv], sizeof(float) * s.len * hv * dv);
    std::memcpy(st.log_g.ptr<float>() + base * hv, &g[s.offset * hv], sizeof(float) * s.len * hv);
    std::memcpy(st.log_beta.ptr<float>() + base * hv, &beta[s.offset * hv], sizeof(float) * s.len * hv);
  }
  // One parallel region over every (sequence, value head) pair; small batches stay serial, since
  // a thread team costs more than a few tiny recurrences.
  const int64_t pairs = static_cast<int64_t>(b.seqs.size()) * hv;
  const int64_t work = N * hv * int64_t{dk} * dv;
#pragma omp parallel for schedule(dynamic) if (work > (1 << 20))
  for (int64_t pi = 0; pi < pairs; ++pi) {
    const auto& s = b.seqs[pi / hv];
    const int h = static_cast<int>(pi % hv);
    const int kh = h / r;
    float* live = st.rec.ptr<float>() + (int64_t{s.slot} * hv + h) * dk * dv;
    std::vector<float> scratch;
    float* S = live;
    if (!WritesState(s.mode)) {  // verify: the live state stays as it was
      scratch.assign(live, live + dk * dv);
      S = scratch.data();
    }
    const int64_t t0 = s.offset;
    float* out = o.ptr<float>() + t0 * hv * dv + h * dv;
    if (s.len == 1) {
      cpu_ref::GdnStep(S, &k[(t0 * hk + kh) * dk], &v[(t0 * hv + h) * dv], g[t0 * hv + h], beta[t0 * hv + h], dk,
                       dv, &q[(t0 * hk + kh) * dk], out);
    } else {
      // g and beta of this head for the span, contiguous.
      std::vector<float> gh(s.len), bh(s.len);
      for (int64_t t = 0; t < s.len; ++t) {
        gh[t] = g[(t0 + t) * hv + h];
        bh[t] = beta[(t0 + t) * hv + h];
      }
      cpu_ref::GdnChunked(S, &q[(t0 * hk + kh) * dk], &k[(t0 * hk + kh) * dk], &v[(t0 * hv + h) * dv], gh.data(),
                          bh.data(), s.len, int64_t{hk} * dk, int64_t{hk} * dk, int64_t{hv} * dv, dk, dv, out,
                          int64_t{hv} * dv);
    }
  }
}

void CpuBackend::GatedRmsNorm(const Tensor& o, const Tensor& z, const Tensor& w, float eps, Tensor& out) {
  const int64_t d = w.numel(), rows = o.numel() / d;
  const float* wp = w.ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = o.ptr<float>() + r * d;
    const float* zz = z.ptr<float>() + r * d;
    float* y = out.ptr<float>() + r * d;
    float ss = 0.f;
    for (int64_t i = 0; i < d; ++i) ss += x[i] * x[i];
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(d) + eps);
    for (int64_t i = 0; i < d; ++i) y[i] = x[i] * inv * wp[i] * cpu_ref::Silu(zz[i]);
  }
}

void CpuBackend::GdnCommit(GdnLayerState& st, const GdnDims& d, int slot, int keep, bool from_checkpoint) {
  const int hk = d.num_k_heads, hv = d.num_v_heads, dk = d.head_k, dv = d.head_v, K = d.conv_kernel;
  const int r = hv / hk;
  const int64_t C = d.conv_dim(), L = st.log_k.dim(1);
  float* win = st.conv.ptr<float>() + int64_t{slot} * K * C;
  float* rec = st.rec.ptr<float>() + int64_t{slot} * hv * dk * dv;
  if (from_checkpoint) {
    std::memcpy(win, st.ckpt_conv.ptr<float>() + int64_t{slot} * K * C, sizeof(float) * K * C);
    std::memcpy(rec, st.ckpt_rec.ptr<float>() + int64_t{slot} * hv * dk * dv, sizeof(float) * hv * dk * dv);
  }
  if (keep <= 0) return;
  // Conv window: the last K rows of [window | logged raw rows 0..keep).
  const float* raw = st.log_raw.ptr<float>() + int64_t{slot} * L * C;
  std::vector<float> hist(static_cast<size_t>((K + keep) * C));
  std::memcpy(hist.data(), win, sizeof(float) * K * C);
  std::memcpy(hist.data() + K * C, raw, sizeof(float) * keep * C);
  std::memcpy(win, hist.data() + int64_t{keep} * C, sizeof(float) * K * C);
  // Recurrent state: replay the same step decode runs, token by token.
  const int64_t base = int64_t{slot} * L;
#pragma omp parallel for if (int64_t{keep} * hv * dk * dv > (1 << 20))
  for (int h = 0; h < hv; ++h) {
    float* S = rec + int64_t{h} * dk * dv;
    for (int t = 0; t < keep; ++t) {
      const int64_t e = base + t;
      cpu_ref::GdnStep(S, st.log_k.ptr<float>() + (e * hk + h / r) * dk, st.log_v.ptr<float>() + (e * hv + h) * dv,
                       st.log_g.ptr<float>()[e * hv + h], st.log_beta.ptr<float>()[e * hv + h], dk, dv,
                       nullptr, nullptr);
    }
  }
}

void CpuBackend::GdnCheckpoint(GdnLayerState& st, int slot) {
  const int64_t cw = st.conv.numel() / st.conv.dim(0), rw = st.rec.numel() / st.rec.dim(0);
  std::memcpy(st.ckpt_conv.ptr<float>() + slot * cw, st.conv.ptr<float>() + slot * cw, sizeof(float) * cw);
  std::memcpy(st.ckpt_rec.ptr<float>() + slot * rw, st.rec.ptr<float>() + slot * rw, sizeof(float) * rw);
}

void CpuBackend::GdnReset(GdnLayerState& st, int slot) {
  const int64_t cw = st.conv.numel() / st.conv.dim(0), rw = st.rec.numel() / st.rec.dim(0);
  std::memset(st.conv.ptr<float>() + slot * cw, 0, sizeof(float) * cw);
  std::memset(st.rec.ptr<float>() + slot * rw, 0, sizeof(float) * rw);
}

}  // namespace specd
