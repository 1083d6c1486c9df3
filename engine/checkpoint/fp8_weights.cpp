#include "checkpoint/fp8_weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/ranges.h>

#include "checkpoint/safetensors.h"
#include "util/fp8.h"

namespace specd {

void QuantizeFp8(const float* w, int64_t rows, int64_t cols, Fp8Blocks b, uint8_t* q, float* scale_inv) {
  const int64_t sc = Fp8ScaleCols(cols, b);
  for (int64_t r0 = 0; r0 < rows; r0 += b.rows) {
    const int64_t r1 = std::min(rows, r0 + b.rows);
    for (int64_t c0 = 0; c0 < cols; c0 += b.cols) {
      const int64_t c1 = std::min(cols, c0 + b.cols);
      float amax = 0.f;
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
      }
      // The same fp32 operations, in the same order, as transformers' Fp8Quantize. Its
      // `448 / amax` is a Python number over a tensor, which torch computes as
      // reciprocal(amax) * 448: two roundings, not one division.
      const float scale = amax > 0.f ? (1.f / amax) * kFp8E4M3Max : 1.f;
      scale_inv[(r0 / b.rows) * sc + c0 / b.cols] = 1.f / scale;
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) {
          const float v = std::clamp(w[r * cols + c] * scale, -kFp8E4M3Max, kFp8E4M3Max);
          q[r * cols + c] = F32ToFp8E4M3(v);
        }
      }
    }
  }
}

void DequantizeFp8(const uint8_t* q, const float* scale_inv, int64_t rows, int64_t cols, Fp8Blocks b, float* out) {
  const int64_t sc = Fp8ScaleCols(cols, b);
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = scale_inv + (r / b.rows) * sc;
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = Fp8E4M3ToF32(q[r * cols + c]) * s[c / b.cols];
  }
}

void RoundTripFp8(std::vector<float>& w, int64_t rows, int64_t cols, Fp8Blocks b) {
  const int64_t n = rows * cols;
  if (n <= 0) return;
  std::vector<uint8_t> q(static_cast<size_t>(n));
  std::vector<float> s(static_cast<size_t>(Fp8ScaleRows(rows, b) * Fp8ScaleCols(cols, b)));
  for (size_t off = 0; off + static_cast<size_t>(n) <= w.size(); off += static_cast<size_t>(n)) {
    QuantizeFp8(w.data() + off, rows, cols, b, q.data(), s.data());
    DequantizeFp8(q.data(), s.data(), rows, cols, b, w.data() + off);
  }
}

bool IsFp8Projection(const std::string& name) {
  if (name.ends_with("experts.gate_up_proj") || name.ends_with("experts.down_proj")) return true;  // fused experts
  if (!name.ends_with(".weight")) return false;
  const std::string module = name.substr(0, name.size() - 7);
  const std::string last = module.substr(module.rfind('.') + 1);
  for (const char* p : {"q_proj", "k_proj", "v_proj", "o_proj", "in_proj_qkv", "in_proj_z", "out_proj", "gate_proj",
                        "up_proj", "down_proj"}) {
    if (last == p) return true;
  }
  return false;
}

namespace {

std::string ShapeText(const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

}  // namespace

StatusOr<std::vector<float>> ReadWeightF32(const Checkpoint& ckpt, const std::string& name,
                                           const std::vector<int64_t>& shape, const std::optional<Fp8Blocks>& fp8) {
  const TensorInfo* t = ckpt.Find(name);
  const std::string scale_name = Fp8ScaleName(name);
  const TensorInfo* st = ckpt.Find(scale_name);
  if (t == nullptr || t->dtype != DType::kF8E4M3) {
    if (t != nullptr && st != nullptr) {
      return InvalidArgument("{}: tensor '{}' is {} but has an FP8 scale '{}' (a weight with a scale must be "
                             "F8_E4M3)",
                             t->file, name, DTypeName(t->dtype), scale_name);
    }
    return ckpt.ReadF32(name, shape);  // absent, or a float tensor: its own errors
  }
  if (!fp8) {
    return InvalidArgument("{}: tensor '{}' is F8_E4M3 but config.json has no FP8 quantization_config "
                           "(quant_method \"fp8\" with weight_block_size)",
                           t->file, name);
  }
  if (!shape.empty() && t->shape != shape) {
    return InvalidArgument("{}: tensor '{}' has shape {}, expected {}", t->file, name, ShapeText(t->shape),
                           ShapeText(shape));
  }
  if (t->shape.size() < 2) {
    return InvalidArgument("{}: tensor '{}' is F8_E4M3 with shape {}; FP8 weights are matrices", t->file, name,
                           ShapeText(t->shape));
  }
  if (st == nullptr) {
    return InvalidArgument("{}: tensor '{}' is F8_E4M3 but its scale '{}' is missing", t->file, name, scale_name);
  }
  const int64_t rows = t->shape[t->shape.size() - 2], cols = t->shape.back();
  std::vector<int64_t> want(t->shape.begin(), t->shape.end() - 2);
  want.push_back(Fp8ScaleRows(rows, *fp8));
  want.push_back(Fp8ScaleCols(cols, *fp8));
  if (st->shape != want) {
    return InvalidArgument("{}: FP8 scale '{}' has shape {}, expected {} for weight {} in {}x{} blocks", st->file,
                           scale_name, ShapeText(st->shape), ShapeText(want), ShapeText(t->shape), fp8->rows,
                           fp8->cols);
  }
  if (st->dtype != DType::kF32 && st->dtype != DType::kBF16 && st->dtype != DType::kF16) {
    return InvalidArgument("{}: FP8 scale '{}' has dtype {}, expected F32, BF16 or F16", st->file, scale_name,
                           DTypeName(st->dtype));
  }
  SPECD_ASSIGN_OR_RETURN(std::vector<float> scale, ckpt.ReadF32(scale_name));
  for (float s : scale) {
    if (!std::isfinite(s) || !(s > 0.f)) {
      return InvalidArgument("{}: FP8 scale '{}' holds {}; scales must be finite and positive", st->file,
                             scale_name, s);
    }
  }
  const size_t n = static_cast<size_t>(t->numel());
  const auto* q = reinterpret_cast<const uint8_t*>(t->data);  // bytes: read in place, any alignment
  for (size_t i = 0; i < n; ++i) {
    if (Fp8E4M3IsNan(q[i])) {
      return InvalidArgument("{}: FP8 tensor '{}' holds NaN at element {}", t->file, name, i);
    }
  }
  std::vector<float> out(n);
  const size_t per = static_cast<size_t>(rows * cols);
  const size_t per_scale = static_cast<size_t>(want[want.size() - 2] * want.back());
  for (size_t m = 0; per > 0 && m * per < n; ++m) {
    DequantizeFp8(q + m * per, scale.data() + m * per_scale, rows, cols, *fp8, out.data() + m * per);
  }
  return out;
}

}  // namespace specd
