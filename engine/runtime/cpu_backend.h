// The fp32 CPU reference backend: OpenBLAS sgemm for projections, OpenMP for the rest.
#pragma once

#include <cmath>

#include "runtime/backend.h"

namespace specd {

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  Device device() const override { return Device::kCpu; }
  DType act_dtype() const override { return DType::kF32; }

  Tensor Alloc(DType dtype, std::vector<int64_t> shape) override;
  void UploadInto(Tensor& dst, int64_t offset, const void* src, DType src_dtype, int64_t n) override;
  Tensor Upload(const void* src, DType src_dtype, std::vector<int64_t> shape, DType dst_dtype) override;
  std::vector<float> DownloadF32(const Tensor& t) override;
  void CopyRows(const Tensor& src, Tensor& dst) override;
  void Zero(Tensor& t) override;
  Tensor Random(DType dtype, std::vector<int64_t> shape, float scale, float offset, uint64_t seed) override;

  void Embedding(const Tensor& table, const Tensor& ids, Tensor& out) override;
  void Gemm(const Tensor& x, const Tensor& w, Tensor& out) override;
  void RmsNorm(const Tensor& x, const Tensor& w, float eps, bool unit_offset, Tensor& out) override;
  void Add(const Tensor& a, const Tensor& b, Tensor& out) override;
  void SwiGlu(const Tensor& gate, const Tensor& up, Tensor& out) override;
  void SigmoidMul(const Tensor& x, const Tensor& gate, Tensor& out) override;
  void GatherRows(const Tensor& x, const Tensor& rows, Tensor& out) override;
  void StageBatch(const BatchInfo& b, const std::vector<int32_t>& ids, const std::vector<int64_t>& rows,
                  Tensor* ids_out, Tensor* rows_out) override;

  void SplitQueryGate(const Tensor& q2, int num_heads, int head_dim, Tensor& q, Tensor& gate) override;
  void Rope(Tensor& x, int num_heads, const AttnDims& d, const BatchInfo& b) override;
  void StageBlockTable(const std::vector<int32_t>& table, Tensor& dst) override;
  void Attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttnDims& d,
                 AttnLayerState& st, const BatchInfo& b, Tensor& out) override;

  void CausalConvSilu(const Tensor& p, const Tensor& w, const GdnDims& d, GdnLayerState& st,
                      const BatchInfo& b, Tensor& y) override;
  void GatedDeltaRule(const Tensor& y, const Tensor& braw, const Tensor& araw, const Tensor& a_log,
                      const Tensor& dt_bias, const GdnDims& d, GdnLayerState& st, const BatchInfo& b,
                      Tensor& o) override;
  void GatedRmsNorm(const Tensor& o, const Tensor& z, const Tensor& w, float eps, Tensor& out) override;
  void GdnCommit(GdnLayerState& st, const GdnDims& d, int slot, int keep, bool from_checkpoint) override;
  void GdnCheckpoint(GdnLayerState& st, int slot) override;
  void GdnReset(GdnLayerState& st, int slot) override;

  void MoeFfn(const Tensor& m, const MoeTensors& w, Tensor& out) override;

  void ArgmaxRows(const Tensor& logits, Tensor& ids) override;
  void MaskIds(Tensor& logits, const Tensor& ban) override;
  std::vector<int32_t> DownloadI32(const Tensor& t) override;
  void ChooseTokens(Tensor& logits, const std::vector<TokenRowSpec>& rows, const Tensor& q, Tensor& out) override;
};

// Reference math shared by the CPU ops and the CPU-side checks of the CUDA kernels.
namespace cpu_ref {
// One step of the gated delta rule on S [dk, dv] (row = key dim):
//   S <- e^g S;  S <- S + k (beta (v - S^T k))^T;  if q: o = S^T q.
void GdnStep(float* S, const float* k, const float* v, float g, float beta, int dk, int dv,
             const float* q, float* o);
// The chunked form (chunk 64) over T tokens of one (sequence, value head), from S (updated).
void GdnChunked(float* S, const float* q, const float* k, const float* v, const float* g,
                const float* beta, int64_t T, int64_t q_stride, int64_t k_stride, int64_t v_stride,
                int dk, int dv, float* o, int64_t o_stride);
inline float Softplus(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }
inline float Sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }
inline float Silu(float x) { return x / (1.f + std::exp(-x)); }
}  // namespace cpu_ref

}  // namespace specd
