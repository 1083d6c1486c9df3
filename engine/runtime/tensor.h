// Tensor: a typed, shaped view of memory owned by a backend (host or device). Row-major,
// contiguous. Views share the owner, so a slice never outlives its storage.
#pragma once

#include <cstdint>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "util/dtype.h"

namespace specd {

enum class Device { kCpu, kCuda };

struct Tensor {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  void* data = nullptr;
  Device device = Device::kCpu;
  std::shared_ptr<void> owner;

  int64_t numel() const {
    return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
  }
  size_t nbytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype); }
  int64_t dim(int i) const { return shape.at(static_cast<size_t>(i < 0 ? i + static_cast<int>(shape.size()) : i)); }
  int rank() const { return static_cast<int>(shape.size()); }
  bool defined() const { return data != nullptr; }
  template <typename T>
  T* ptr() const { return static_cast<T*>(data); }

  // A contiguous sub-range of `elems` elements starting at element `offset`, reshaped.
  Tensor Slice(int64_t offset, std::vector<int64_t> new_shape) const {
    Tensor t = *this;
    t.data = static_cast<char*>(data) + offset * static_cast<int64_t>(DTypeSize(dtype));
    t.shape = std::move(new_shape);
    return t;
  }
  // Rows [r0, r0+n) of the leading dimension.
  Tensor Rows(int64_t r0, int64_t n) const {
    std::vector<int64_t> s = shape;
    const int64_t row = s.empty() || s[0] == 0 ? 0 : numel() / s[0];
    s[0] = n;
    return Slice(r0 * row, std::move(s));
  }
  Tensor Reshape(std::vector<int64_t> new_shape) const {
    Tensor t = *this;
    t.shape = std::move(new_shape);
    return t;
  }
  std::string ShapeString() const { return fmt::format("[{}]", fmt::join(shape, ", ")); }
};

}  // namespace specd
