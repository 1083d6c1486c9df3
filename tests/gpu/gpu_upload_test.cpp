// Backend::UploadInto on CUDA (the weight loader's path, issue 17): every supported conversion,
// at an offset, from an unaligned host pointer, over more than one 64 MiB staging chunk (both
// buffers in turn, then reused), against the CPU backend's conversion of the same bytes.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "gpu_test_util.h"
#include "util/dtype.h"

namespace specd::testing {
namespace {

TEST(GpuUpload, ConversionsAcrossStagingChunks) {
  SPECD_REQUIRE_GPU();
  Backend* gpu = Gpu();
  CpuBackend cpu;
  // 80 M elements: three and more chunks of a bf16 destination (33.5 M elements each).
  const int64_t n = 80'000'003, offset = 11;
  const auto vals = RandomVec(static_cast<size_t>(n), 17, 3.f);
  struct Case {
    DType src, dst;
  };
  for (const Case c : {Case{DType::kBF16, DType::kBF16}, Case{DType::kF32, DType::kBF16}, Case{DType::kF16, DType::kBF16},
                       Case{DType::kBF16, DType::kF32}, Case{DType::kF32, DType::kF32}}) {
    SCOPED_TRACE(std::string(DTypeName(c.src)) + " -> " + DTypeName(c.dst));
    // The source bytes, one byte past an aligned address (checkpoint data need not be aligned).
    const size_t es = DTypeSize(c.src);
    std::vector<unsigned char> raw(static_cast<size_t>(n) * es + 1);
    unsigned char* src = raw.data() + 1;
    for (int64_t i = 0; i < n; ++i) {
      if (c.src == DType::kF32) {
        std::memcpy(src + 4 * i, &vals[i], 4);
      } else {
        // f16 sources: every code of [1, 2) in turn (exactly representable in fp32 and bf16-rounded
        // by the conversion).
        const uint16_t h = c.src == DType::kBF16 ? F32ToBf16(vals[i]) : static_cast<uint16_t>(0x3c00 + (i % 1024));
        std::memcpy(src + 2 * i, &h, 2);
      }
    }
    // The reference: the CPU backend's conversion to fp32, then bf16 rounding for a bf16 target.
    Tensor ref = cpu.Empty(DType::kF32, {n});
    cpu.UploadInto(ref, 0, src, c.src, n);
    std::vector<float> want(ref.ptr<float>(), ref.ptr<float>() + n);
    if (c.dst == DType::kBF16) {
      for (float& v : want) v = Bf16ToF32(F32ToBf16(v));
    }
    Tensor t = gpu->Alloc(c.dst, {n + offset + 5});
    gpu->UploadInto(t, offset, src, c.src, n);
    ASSERT_TRUE(gpu->FinishUploads().ok());
    ASSERT_TRUE(gpu->TakeError().ok());
    const auto got = gpu->DownloadF32(t);
    int64_t wrong = 0;
    for (int64_t i = 0; i < n; ++i) wrong += std::memcmp(&got[offset + i], &want[i], 4) != 0;
    EXPECT_EQ(wrong, 0);
    for (int64_t i = 0; i < offset; ++i) EXPECT_EQ(got[i], 0.f) << "before the offset: untouched";
    for (int64_t i = offset + n; i < n + offset + 5; ++i) EXPECT_EQ(got[i], 0.f) << "past the end: untouched";
  }
  Tensor small = gpu->Alloc(DType::kBF16, {4});
  float x[8] = {};
  EXPECT_THROW(gpu->UploadInto(small, 2, x, DType::kF32, 3), std::invalid_argument);
}

}  // namespace
}  // namespace specd::testing
