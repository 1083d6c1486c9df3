#include "runtime/cpu_backend.h"

#include "runtime/cpu_gemm.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace specd {

Tensor CpuBackend::Alloc(DType dtype, std::vector<int64_t> shape) {
  Tensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.device = Device::kCpu;
  const size_t bytes = std::max<size_t>(t.nbytes(), 1);
  CountAllocation();
  // 64-byte alignment keeps sgemm and vector loops on aligned rows.
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (p == nullptr) {
    NoteAllocFailure();
    throw std::bad_alloc();
  }
  std::memset(p, 0, bytes);
  t.owner = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  t.data = p;
  return t;
}

Tensor CpuBackend::Upload(const void* src, DType src_dtype, std::vector<int64_t> shape, DType dst_dtype) {
  Tensor t = Alloc(dst_dtype, std::move(shape));
  const int64_t n = t.numel();
  if (src_dtype == dst_dtype) {
    std::memcpy(t.data, src, t.nbytes());
    return t;
  }
  if (dst_dtype != DType::kF32) throw std::invalid_argument("cpu backend stores floats as F32 only");
  float* d = t.ptr<float>();
  const auto* s16 = static_cast<const uint16_t*>(src);
  switch (src_dtype) {
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) d[i] = Bf16ToF32(s16[i]);
      break;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) d[i] = F16ToF32(s16[i]);
      break;
    default:
      throw std::invalid_argument("unsupported upload conversion");
  }
  return t;
}

void CpuBackend::UploadInto(Tensor& dst, int64_t offset, const void* src, DType src_dtype, int64_t n) {
  if (offset < 0 || n < 0 || offset + n > dst.numel()) throw std::invalid_argument("UploadInto: out of the tensor");
  const auto* s = static_cast<const unsigned char*>(src);
  if (src_dtype == dst.dtype) {
    std::memcpy(static_cast<char*>(dst.data) + offset * DTypeSize(dst.dtype), s, static_cast<size_t>(n) * DTypeSize(src_dtype));
    return;
  }
  if (dst.dtype != DType::kF32 || (src_dtype != DType::kBF16 && src_dtype != DType::kF16)) {
    throw std::invalid_argument("UploadInto: unsupported conversion");
  }
  float* d = dst.ptr<float>() + offset;
  const bool bf16 = src_dtype == DType::kBF16;
  // Checkpoint data need not be 2-byte aligned: read each element through memcpy.
#pragma omp parallel for schedule(static) if (n > (1 << 20))
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, s + 2 * i, 2);
    d[i] = bf16 ? Bf16ToF32(h) : F16ToF32(h);
  }
}

std::vector<float> CpuBackend::DownloadF32(const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  if (t.dtype == DType::kF32) {
    std::memcpy(out.data(), t.data, t.nbytes());
  } else if (t.dtype == DType::kBF16) {
    const auto* s = t.ptr<uint16_t>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = Bf16ToF32(s[i]);
  } else {
    throw std::invalid_argument("DownloadF32 of a non-float tensor");
  }
  return out;
}

void CpuBackend::CopyRows(const Tensor& src, Tensor& dst) {
  if (src.nbytes() != dst.nbytes()) throw std::invalid_argument("CopyRows: size mismatch");
  std::memmove(dst.data, src.data, src.nbytes());
}

void CpuBackend::Zero(Tensor& t) { std::memset(t.data, 0, t.nbytes()); }

Tensor CpuBackend::Random(DType dtype, std::vector<int64_t> shape, float scale, float offset, uint64_t seed) {
  Tensor t = Alloc(DType::kF32, std::move(shape));
  float* p = t.ptr<float>();
  const int64_t n = t.numel();
#pragma omp parallel for if (n > (1 << 20))
  for (int64_t i = 0; i < n; ++i) {
    // Box-Muller on two halves of a splitmix64 hash of (seed, i).
    uint64_t h = seed ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(i + 1));
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
    h ^= h >> 31;
    const float u1 = (static_cast<float>(h >> 40) + 1.f) * (1.f / 16777217.f);
    const float u2 = static_cast<float>((h >> 16) & 0xffffff) * (1.f / 16777216.f);
    p[i] = offset + scale * std::sqrt(-2.f * std::log(u1)) * std::cos(6.2831853f * u2);
  }
  (void)dtype;  // the CPU reference stores every float as F32
  return t;
}

void CpuBackend::Embedding(const Tensor& table, const Tensor& ids, Tensor& out) {
  const int64_t n = ids.numel(), h = table.dim(1);
  const auto* id = ids.ptr<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(out.ptr<float>() + i * h, table.ptr<float>() + int64_t{id[i]} * h, sizeof(float) * h);
  }
}

void CpuBackend::Gemm(const Tensor& x, const Tensor& w, Tensor& out) {
  const int64_t n = x.numel() / x.dim(-1), k = x.dim(-1), m = w.dim(0);
  if (w.dim(1) != k || out.numel() != n * m) {
    throw std::invalid_argument(fmt::format("Gemm shape mismatch: x {} w {} out {}", x.ShapeString(),
                                            w.ShapeString(), out.ShapeString()));
  }
  CpuSgemm(x.ptr<float>(), w.ptr<float>(), out.ptr<float>(), n, m, k);
}

void CpuBackend::RmsNorm(const Tensor& x, const Tensor& w, float eps, bool unit_offset, Tensor& out) {
  const int64_t d = w.numel(), rows = x.numel() / d;
  const float* wp = w.ptr<float>();
#pragma omp parallel for if (rows * d > (1 << 18))
  for (int64_t r = 0; r < rows; ++r) {
    const float* xi = x.ptr<float>() + r * d;
    float* yo = out.ptr<float>() + r * d;
    float ss = 0.f;
    for (int64_t i = 0; i < d; ++i) ss += xi[i] * xi[i];
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(d) + eps);
    for (int64_t i = 0; i < d; ++i) yo[i] = xi[i] * inv * (unit_offset ? 1.f + wp[i] : wp[i]);
  }
}

void CpuBackend::Add(const Tensor& a, const Tensor& b, Tensor& out) {
  const int64_t n = a.numel();
  const float *pa = a.ptr<float>(), *pb = b.ptr<float>();
  float* po = out.ptr<float>();
  for (int64_t i = 0; i < n; ++i) po[i] = pa[i] + pb[i];
}

void CpuBackend::SwiGlu(const Tensor& gate, const Tensor& up, Tensor& out) {
  const int64_t n = gate.numel();
  const float *g = gate.ptr<float>(), *u = up.ptr<float>();
  float* o = out.ptr<float>();
#pragma omp parallel for if (n > (1 << 18))
  for (int64_t i = 0; i < n; ++i) o[i] = cpu_ref::Silu(g[i]) * u[i];
}

void CpuBackend::SigmoidMul(const Tensor& x, const Tensor& gate, Tensor& out) {
  const int64_t n = x.numel();
  const float *xp = x.ptr<float>(), *g = gate.ptr<float>();
  float* o = out.ptr<float>();
  for (int64_t i = 0; i < n; ++i) o[i] = xp[i] * cpu_ref::Sigmoid(g[i]);
}

void CpuBackend::GatherRows(const Tensor& x, const Tensor& rows, Tensor& out) {
  const int64_t w = x.numel() / x.dim(0);
  const int64_t* r = rows.ptr<int64_t>();
  for (int64_t i = 0; i < rows.numel(); ++i) {
    std::memcpy(out.ptr<float>() + i * w, x.ptr<float>() + r[i] * w, sizeof(float) * w);
  }
}

void CpuBackend::StageBatch(const BatchInfo& b, const std::vector<int32_t>& ids, const std::vector<int64_t>& rows,
                            Tensor* ids_out, Tensor* rows_out) {
  (void)b;  // the CPU ops read the batch layout from the host BatchInfo directly
  *ids_out = Upload(ids.data(), DType::kI32, {static_cast<int64_t>(ids.size())}, DType::kI32);
  *rows_out = Upload(rows.data(), DType::kI64, {static_cast<int64_t>(rows.size())}, DType::kI64);
}

void CpuBackend::SplitQueryGate(const Tensor& q2, int num_heads, int head_dim, Tensor& q, Tensor& gate) {
  const int64_t n = q2.dim(0), d = head_dim;
  for (int64_t t = 0; t < n; ++t) {
    for (int h = 0; h < num_heads; ++h) {
      const float* src = q2.ptr<float>() + (t * num_heads + h) * 2 * d;
      std::memcpy(q.ptr<float>() + (t * num_heads + h) * d, src, sizeof(float) * d);
      std::memcpy(gate.ptr<float>() + (t * num_heads + h) * d, src + d, sizeof(float) * d);
    }
  }
}

void CpuBackend::Rope(Tensor& x, int num_heads, const AttnDims& d, const BatchInfo& b) {
  const int half = d.rotary_dim / 2;
  // inv_freq and angles in fp32, as transformers computes them.
  std::vector<float> inv_freq(half);
  for (int i = 0; i < half; ++i) {
    inv_freq[i] = 1.f / std::pow(d.rope_theta, static_cast<float>(2 * i) / static_cast<float>(d.rotary_dim));
  }
  std::vector<float> cs(half), sn(half);
  for (const auto& s : b.seqs) {
    for (int64_t t = 0; t < s.len; ++t) {
      const float pos = static_cast<float>(s.n_past + t);
      for (int i = 0; i < half; ++i) {
        const float f = pos * inv_freq[i];
        cs[i] = std::cos(f);
        sn[i] = std::sin(f);
      }
      for (int h = 0; h < num_heads; ++h) {
        float* u = x.ptr<float>() + ((s.offset + t) * num_heads + h) * d.head_dim;
        for (int i = 0; i < half; ++i) {
          const float x1 = u[i], x2 = u[i + half];
          u[i] = x1 * cs[i] - x2 * sn[i];
          u[i + half] = x2 * cs[i] + x1 * sn[i];
        }
      }
    }
  }
}

std::unique_ptr<Backend> MakeCpuBackend() { return std::make_unique<CpuBackend>(); }

}  // namespace specd
