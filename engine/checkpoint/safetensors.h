// Reading and writing safetensors checkpoints. Files are mmap'ed and fully validated at Open, so
// later code can trust every TensorInfo (in-bounds, size-consistent, non-overlapping) without
// re-checking, and a corrupt checkpoint fails at load with a message naming the file and tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "util/dtype.h"
#include "util/status.h"

namespace specd {

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  // Points into the mmap. Files written by SaveSafetensors (and by the Python library) keep it
  // aligned to the element size, but other writers need not, so read through memcpy.
  const std::byte* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // path of the file holding it
  int64_t numel() const;
};

// One mmap'ed .safetensors file. Validates everything at Open.
class SafetensorsFile {
 public:
  static StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();  // munmap
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }  // "__metadata__"
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile() = default;

  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: either model.safetensors, or model.safetensors.index.json listing shards
// (weight_map: name -> shard file). Also accepts a direct path to a .safetensors file.
class Checkpoint {
 public:
  static StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir_or_file);

  const TensorInfo* Find(const std::string& name) const;  // nullptr if absent
  std::vector<std::string> Names() const;                 // sorted
  // The directory holding the checkpoint (for a direct file path: its parent), so callers can
  // find config.json next to it.
  const std::string& dir() const { return dir_; }

  // Reads a float tensor (F32, BF16 or F16) converted to fp32, after checking it exists and has
  // exactly `shape` (an empty `shape` skips the shape check).
  StatusOr<std::vector<float>> ReadF32(const std::string& name,
                                       const std::vector<int64_t>& shape = {}) const;
  // Same for integer tensors (I64 or I32) converted to int64.
  StatusOr<std::vector<int64_t>> ReadI64(const std::string& name) const;

 private:
  Checkpoint() = default;
  StatusOr<const TensorInfo*> Get(const std::string& name) const;

  std::string dir_;
  std::string source_;  // the path Open was given, for error messages
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*> index_;  // into files_' maps (std::map nodes are stable)
};

struct TensorToWrite {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;
};

// Writes a safetensors file (header JSON sorted by name, 8-byte aligned data, little endian).
Status SaveSafetensors(const std::string& path, const std::map<std::string, TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});
// A value-count mismatch with `shape` is reported by SaveSafetensors, not here.
TensorToWrite F32Tensor(std::vector<int64_t> shape, const std::vector<float>& values);

}  // namespace specd
