// Block-wise FP8 weights: reading them from a checkpoint (an F8_E4M3 tensor and its
// NAME_scale_inv), and quantizing fp32 weights the same way at load (--quantize fp8).
// Quantization is transformers' FineGrainedFP8 rule, bit for bit (tests/unit/fp8_test.cpp): per
// block, scale = (1 / amax) * 448 (1 for an all-zero block), e4m3 = round(w * scale) clamped to +-448,
// scale_inv = 1 / scale; weight = e4m3 * scale_inv. A block that the matrix edge cuts short
// (rows or cols not a multiple of the block) covers what is left, as in DeepSeek's and vLLM's
// ceil-sized scale grids.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/config.h"
#include "util/status.h"

namespace specd {

class Checkpoint;

// The scale grid of a [rows, cols] matrix.
inline int64_t Fp8ScaleRows(int64_t rows, Fp8Blocks b) { return (rows + b.rows - 1) / b.rows; }
inline int64_t Fp8ScaleCols(int64_t cols, Fp8Blocks b) { return (cols + b.cols - 1) / b.cols; }

// One [rows, cols] matrix: q [rows * cols] e4m3 bytes, scale_inv [scale rows * scale cols].
void QuantizeFp8(const float* w, int64_t rows, int64_t cols, Fp8Blocks b, uint8_t* q, float* scale_inv);
void DequantizeFp8(const uint8_t* q, const float* scale_inv, int64_t rows, int64_t cols, Fp8Blocks b, float* out);
// Replaces each [rows, cols] matrix of `w` (a stack of them) by its quantized-dequantized value:
// what a checkpoint quantized with `b` would hold.
void RoundTripFp8(std::vector<float>& w, int64_t rows, int64_t cols, Fp8Blocks b);

// The scale tensor's name for weight `name` (transformers' rule: NAME.weight -> NAME.weight_scale_inv).
inline std::string Fp8ScaleName(const std::string& name) { return name + "_scale_inv"; }

// The projections Qwen's FP8 releases store in FP8 (and --quantize fp8 rounds): the attention
// and GDN projections (q/k/v/o_proj, in_proj_qkv, in_proj_z, out_proj), the dense and shared
// MLPs and every expert. Embeddings, lm_head, norms, conv1d, in_proj_a/b, the router and the
// shared-expert gate stay as stored.
bool IsFp8Projection(const std::string& name);

// Reads weight `name` as fp32 after checking it has `shape` (empty: any). A float tensor is
// read as stored; an F8_E4M3 one is dequantized with its scale, which must exist, be a float
// tensor of the ceil-sized grid shape, finite and positive. An FP8 tensor in a checkpoint whose
// config has no FP8 quantization_config (`fp8` empty), a scale beside a weight that is not FP8,
// and a NaN in the weight are errors naming the tensor.
StatusOr<std::vector<float>> ReadWeightF32(const Checkpoint& ckpt, const std::string& name,
                                           const std::vector<int64_t>& shape, const std::optional<Fp8Blocks>& fp8);

}  // namespace specd
