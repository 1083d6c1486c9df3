// CpuBackend::UploadInto (the weight loader's path): each float source dtype into an fp32 tensor
// at an offset, from an unaligned pointer, equal to the element conversions; nothing outside the
// range written; a range past the tensor refused. tests/gpu/gpu_upload_test.cpp holds the CUDA
// form to this one.
#include <gtest/gtest.h>

#include <cstring>
#include <stdexcept>
#include <vector>

#include "runtime/backend.h"
#include "test_util.h"
#include "util/dtype.h"

namespace specd::testing {
namespace {

TEST(CpuUpload, ConversionsAtAnOffsetFromUnalignedData) {
  auto be = MakeCpuBackend();
  const int64_t n = (1 << 20) + 37, offset = 5;  // past the size where the conversion goes parallel
  const auto vals = RandomVec(static_cast<size_t>(n), 9, 4.f);
  for (DType src_dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(DTypeName(src_dt));
    const size_t es = DTypeSize(src_dt);
    std::vector<unsigned char> raw(static_cast<size_t>(n) * es + 3);
    unsigned char* src = raw.data() + 3;
    std::vector<float> want(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      if (src_dt == DType::kF32) {
        std::memcpy(src + 4 * i, &vals[i], 4);
        want[i] = vals[i];
      } else {
        const uint16_t h = src_dt == DType::kBF16 ? F32ToBf16(vals[i]) : static_cast<uint16_t>(0x3c00 + (i % 2048));
        std::memcpy(src + 2 * i, &h, 2);
        want[i] = src_dt == DType::kBF16 ? Bf16ToF32(h) : F16ToF32(h);
      }
    }
    Tensor t = be->Alloc(DType::kF32, {n + offset + 2});
    be->UploadInto(t, offset, src, src_dt, n);
    const float* got = t.ptr<float>();
    EXPECT_EQ(std::memcmp(got + offset, want.data(), static_cast<size_t>(n) * 4), 0);
    for (int64_t i : {int64_t{0}, offset - 1, offset + n, offset + n + 1}) EXPECT_EQ(got[i], 0.f) << i;
  }
  Tensor small = be->Alloc(DType::kF32, {4});
  float x[8] = {};
  EXPECT_THROW(be->UploadInto(small, 2, x, DType::kF32, 3), std::invalid_argument);
  EXPECT_THROW(be->UploadInto(small, -1, x, DType::kF32, 1), std::invalid_argument);
}

}  // namespace
}  // namespace specd::testing
