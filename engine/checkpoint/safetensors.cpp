#include "checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>
#include <system_error>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

namespace specd {

// The format is little endian and we hand out pointers into the mapping as-is.
static_assert(std::endian::native == std::endian::little, "safetensors loader assumes little endian");

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr std::string_view kMetadataKey = "__metadata__";

std::string ShapeStr(const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

std::string ErrnoStr(int e) { return std::error_code(e, std::generic_category()).message(); }

// numel * elem_size in bytes, or nullopt on overflow (a hostile header must not wrap around
// into a size that happens to match its offsets).
std::optional<uint64_t> ByteSize(const std::vector<int64_t>& shape, DType dtype) {
  uint64_t n = DTypeSize(dtype);
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return std::nullopt;
  }
  return n;
}

struct Range {
  uint64_t begin;
  uint64_t end;
  const std::string* name;
};

Status CheckNoOverlap(const std::string& path, std::vector<Range> ranges) {
  // Empty tensors own no bytes, so they cannot collide with anything.
  std::erase_if(ranges, [](const Range& r) { return r.begin == r.end; });
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  // Comparing with the furthest-reaching earlier range (not just the previous one) also catches
  // a small tensor nested inside a large one that starts earlier.
  const Range* reach = nullptr;
  for (const Range& r : ranges) {
    if (reach != nullptr && r.begin < reach->end) {
      return InvalidArgument("{}: tensors '{}' [{}, {}) and '{}' [{}, {}) have overlapping data_offsets",
                             path, *reach->name, reach->begin, reach->end, *r.name, r.begin, r.end);
    }
    if (reach == nullptr || r.end > reach->end) reach = &r;
  }
  return Status::Ok();
}

// Returns the value of a JSON integer that must be >= 0, or nullopt for negative / non-integer.
std::optional<uint64_t> AsUnsigned(const json& j) {
  if (j.is_number_unsigned()) return j.get<uint64_t>();
  return std::nullopt;
}

Status ParseTensorEntry(const std::string& path, const std::string& name, const json& v,
                        const std::byte* data, uint64_t data_size, TensorInfo& out, Range& range) {
  if (!v.is_object() || !v.contains("dtype") || !v["dtype"].is_string() || !v.contains("shape") ||
      !v["shape"].is_array() || !v.contains("data_offsets") || !v["data_offsets"].is_array() ||
      v["data_offsets"].size() != 2) {
    return InvalidArgument(
        "{}: bad header JSON: tensor '{}' needs \"dtype\" (string), \"shape\" (array) and "
        "\"data_offsets\" (array of 2)",
        path, name);
  }
  const std::string dtype_name = v["dtype"].get<std::string>();
  std::optional<DType> dtype = DTypeFromName(dtype_name);
  if (!dtype) return InvalidArgument("{}: tensor '{}' has unknown dtype '{}'", path, name, dtype_name);

  std::vector<int64_t> shape;
  for (const json& d : v["shape"]) {
    if (!d.is_number_integer()) {
      return InvalidArgument("{}: bad header JSON: tensor '{}' has a non-integer dimension {}", path, name,
                             d.dump());
    }
    if (d.is_number_unsigned() ? d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX) : d.get<int64_t>() < 0) {
      return InvalidArgument("{}: tensor '{}' has invalid dimension {} in shape {}", path, name, d.dump(),
                             v["shape"].dump());
    }
    shape.push_back(d.get<int64_t>());
  }

  const json& offs = v["data_offsets"];
  if (!offs[0].is_number_integer() || !offs[1].is_number_integer()) {
    return InvalidArgument("{}: bad header JSON: tensor '{}' has non-integer data_offsets {}", path, name,
                           offs.dump());
  }
  std::optional<uint64_t> begin = AsUnsigned(offs[0]);
  std::optional<uint64_t> end = AsUnsigned(offs[1]);
  if (!begin || !end || *end < *begin) {
    return DataLoss("{}: tensor '{}' has data_offsets {} out of range", path, name, offs.dump());
  }
  if (*end > data_size) {
    return DataLoss("{}: tensor '{}' has data_offsets {} out of range: the data buffer holds {} bytes "
                    "(truncated file?)",
                    path, name, offs.dump(), data_size);
  }
  std::optional<uint64_t> want = ByteSize(shape, *dtype);
  if (!want || *want != *end - *begin) {
    return InvalidArgument("{}: tensor '{}' spans {} bytes but {} {} needs {}", path, name, *end - *begin,
                           dtype_name, ShapeStr(shape),
                           want ? std::to_string(*want) : std::string("more than 2^64"));
  }

  out.name = name;
  out.dtype = *dtype;
  out.shape = std::move(shape);
  out.data = data + *begin;
  out.nbytes = static_cast<size_t>(*end - *begin);
  out.file = path;
  range = Range{*begin, *end, nullptr};
  return Status::Ok();
}

Status ParseHeader(const std::string& path, std::string_view text, const std::byte* data,
                   uint64_t data_size, std::map<std::string, TensorInfo>& tensors,
                   std::map<std::string, std::string>& metadata) {
  // nlohmann keeps the last of duplicate keys silently; a tensor named twice is ambiguous, so
  // spot it while parsing.
  std::set<std::string> seen;
  std::string dup;
  auto on_event = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (depth == 1 && ev == json::parse_event_t::key && dup.empty()) {
      std::string key = parsed.get<std::string>();
      if (!seen.insert(key).second) dup = std::move(key);
    }
    return true;
  };
  json header;
  try {
    header = json::parse(text.begin(), text.end(), on_event);
  } catch (const json::exception& e) {
    return InvalidArgument("{}: bad header JSON: {}", path, e.what());
  }
  if (!header.is_object()) return InvalidArgument("{}: bad header JSON: not an object", path);
  if (!dup.empty()) return InvalidArgument("{}: bad header JSON: tensor '{}' is listed twice", path, dup);

  std::vector<Range> ranges;
  for (const auto& [key, v] : header.items()) {
    if (key == kMetadataKey) {
      if (!v.is_object()) return InvalidArgument("{}: bad header JSON: __metadata__ is not an object", path);
      for (const auto& [mk, mv] : v.items()) {
        if (!mv.is_string()) {
          return InvalidArgument("{}: bad header JSON: __metadata__ value for '{}' is not a string", path, mk);
        }
        metadata.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    TensorInfo info;
    Range range{};
    SPECD_RETURN_IF_ERROR(ParseTensorEntry(path, key, v, data, data_size, info, range));
    auto it = tensors.emplace(key, std::move(info)).first;
    range.name = &it->first;
    ranges.push_back(range);
  }
  return CheckNoOverlap(path, std::move(ranges));
}

StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("{}: cannot open: {}", path, ErrnoStr(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return DataLoss("{}: read error", path);
  return ss.str();
}

template <typename Out, typename In>
void Widen(const std::byte* src, size_t n, std::vector<Out>& out) {
  out.resize(n);
  for (size_t i = 0; i < n; ++i) {
    In v;
    std::memcpy(&v, src + i * sizeof(In), sizeof(In));  // data may be unaligned
    out[i] = static_cast<Out>(v);
  }
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  try {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NotFound("{}: cannot open: {}", path, ErrnoStr(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      return NotFound("{}: not a readable regular file", path);
    }
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    if (size < 8) {
      ::close(fd);
      return DataLoss("{}: truncated: {} bytes, less than the 8-byte header length", path, size);
    }
    void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int map_errno = errno;
    ::close(fd);  // the mapping keeps the file alive
    if (map == MAP_FAILED) return NotFound("{}: cannot mmap: {}", path, ErrnoStr(map_errno));

    std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
    f->path_ = path;
    f->map_ = map;
    f->map_size_ = size;

    const auto* base = static_cast<const std::byte*>(map);
    uint64_t header_len;
    std::memcpy(&header_len, base, 8);
    if (header_len > size - 8) {
      return DataLoss("{}: truncated: header length {} but only {} bytes follow", path, header_len,
                      size - 8);
    }
    std::string_view header(reinterpret_cast<const char*>(base + 8), header_len);
    SPECD_RETURN_IF_ERROR(ParseHeader(path, header, base + 8 + header_len, size - 8 - header_len,
                                      f->tensors_, f->metadata_));
    return f;
  } catch (const std::exception& e) {  // bad_alloc or a json surprise: never let it escape
    return Internal("{}: {}", path, e.what());
  }
}

// ---------------------------------------------------------------------------------------------
// Checkpoint

namespace {

constexpr std::string_view kSingleName = "model.safetensors";
constexpr std::string_view kIndexName = "model.safetensors.index.json";

}  // namespace

StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir_or_file) {
  try {
    std::unique_ptr<Checkpoint> ck(new Checkpoint());

    auto add_file = [&](std::unique_ptr<SafetensorsFile> f) -> Status {
      for (const auto& [name, info] : f->tensors()) {
        auto [it, inserted] = ck->index_.emplace(name, &info);
        if (!inserted) {
          return InvalidArgument("checkpoint {}: tensor '{}' appears in both {} and {}", dir_or_file, name,
                                 it->second->file, f->path());
        }
      }
      ck->files_.push_back(std::move(f));
      return Status::Ok();
    };

    auto load_index = [&](const fs::path& index_path) -> Status {
      const std::string ipath = index_path.string();
      SPECD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(ipath));
      json index;
      try {
        index = json::parse(text);
      } catch (const json::exception& e) {
        return InvalidArgument("{}: bad index JSON: {}", ipath, e.what());
      }
      if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
        return InvalidArgument("{}: bad index JSON: no \"weight_map\" object", ipath);
      }
      // shard file -> tensors the index places there; each shard is mapped once.
      std::map<std::string, std::vector<std::string>> by_shard;
      for (const auto& [name, shard] : index["weight_map"].items()) {
        if (!shard.is_string()) {
          return InvalidArgument("{}: bad index JSON: weight_map entry for tensor '{}' is not a string", ipath,
                                 name);
        }
        by_shard[shard.get<std::string>()].push_back(name);
      }
      if (by_shard.empty()) return InvalidArgument("{}: bad index JSON: weight_map is empty", ipath);

      for (const auto& [shard, names] : by_shard) {
        const std::string spath = (index_path.parent_path() / shard).string();
        auto f = SafetensorsFile::Open(spath);
        if (!f.ok()) {
          return Status(f.status().code(), fmt::format("{}: shard '{}' (holding tensor '{}'): {}", ipath, shard,
                                                       names.front(), f.status().message()));
        }
        for (const std::string& name : names) {
          if (!(*f)->tensors().contains(name)) {
            return NotFound("{}: tensor '{}' is mapped to {} but that file does not contain it", ipath, name,
                            spath);
          }
        }
        SPECD_RETURN_IF_ERROR(add_file(std::move(f).value()));
      }
      return Status::Ok();
    };

    auto open_file = [&](const fs::path& p) -> Status {
      SPECD_ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(p.string()));
      return add_file(std::move(f));
    };

    const fs::path p(dir_or_file);
    std::error_code ec;
    const fs::file_status st = fs::status(p, ec);
    if (fs::is_directory(st)) {
      ck->dir_ = dir_or_file;
      // transformers prefers the single file when both exist; do the same.
      if (fs::exists(p / kSingleName, ec)) {
        SPECD_RETURN_IF_ERROR(open_file(p / kSingleName));
      } else if (fs::exists(p / kIndexName, ec)) {
        SPECD_RETURN_IF_ERROR(load_index(p / kIndexName));
      } else {
        return NotFound("checkpoint {}: contains neither {} nor {}", dir_or_file, kSingleName, kIndexName);
      }
    } else if (fs::exists(st)) {
      ck->dir_ = p.has_parent_path() ? p.parent_path().string() : std::string(".");
      if (std::string_view(dir_or_file).ends_with(".index.json")) {
        SPECD_RETURN_IF_ERROR(load_index(p));
      } else {
        SPECD_RETURN_IF_ERROR(open_file(p));
      }
    } else {
      return NotFound("checkpoint {} does not exist", dir_or_file);
    }
    ck->source_ = dir_or_file;
    return ck;
  } catch (const std::exception& e) {
    return Internal("checkpoint {}: {}", dir_or_file, e.what());
  }
}

const TensorInfo* Checkpoint::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

std::vector<std::string> Checkpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& kv : index_) names.push_back(kv.first);
  return names;
}

StatusOr<const TensorInfo*> Checkpoint::Get(const std::string& name) const {
  const TensorInfo* t = Find(name);
  if (t == nullptr) return NotFound("tensor '{}' not found in checkpoint {}", name, source_);
  return t;
}

StatusOr<std::vector<float>> Checkpoint::ReadF32(const std::string& name,
                                                 const std::vector<int64_t>& shape) const {
  SPECD_ASSIGN_OR_RETURN(const TensorInfo* t, Get(name));
  if (!shape.empty() && t->shape != shape) {
    return InvalidArgument("{}: tensor '{}' has shape {}, expected {}", t->file, name, ShapeStr(t->shape),
                           ShapeStr(shape));
  }
  const size_t n = static_cast<size_t>(t->numel());
  std::vector<float> out;
  switch (t->dtype) {
    case DType::kF32:
      out.resize(n);
      if (n > 0) std::memcpy(out.data(), t->data, t->nbytes);  // a 0-element tensor has no data pointer
      return out;
    case DType::kBF16:
    case DType::kF16: {
      std::vector<uint16_t> raw;
      Widen<uint16_t, uint16_t>(t->data, n, raw);
      out.resize(n);
      const bool bf16 = t->dtype == DType::kBF16;
      for (size_t i = 0; i < n; ++i) out[i] = bf16 ? Bf16ToF32(raw[i]) : F16ToF32(raw[i]);
      return out;
    }
    default:
      return InvalidArgument("{}: tensor '{}' has dtype {}, expected F32, BF16 or F16", t->file, name,
                             DTypeName(t->dtype));
  }
}

StatusOr<std::vector<int64_t>> Checkpoint::ReadI64(const std::string& name) const {
  SPECD_ASSIGN_OR_RETURN(const TensorInfo* t, Get(name));
  const size_t n = static_cast<size_t>(t->numel());
  std::vector<int64_t> out;
  switch (t->dtype) {
    case DType::kI64: Widen<int64_t, int64_t>(t->data, n, out); return out;
    case DType::kI32: Widen<int64_t, int32_t>(t->data, n, out); return out;
    default:
      return InvalidArgument("{}: tensor '{}' has dtype {}, expected I64 or I32", t->file, name,
                             DTypeName(t->dtype));
  }
}

// ---------------------------------------------------------------------------------------------
// Writing

TensorToWrite F32Tensor(std::vector<int64_t> shape, const std::vector<float>& values) {
  TensorToWrite t{DType::kF32, std::move(shape), std::vector<std::byte>(values.size() * sizeof(float))};
  if (!values.empty()) std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

Status SaveSafetensors(const std::string& path, const std::map<std::string, TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  try {
    for (const auto& [name, t] : tensors) {
      if (name == kMetadataKey) return InvalidArgument("{}: '{}' is reserved as a tensor name", path, name);
      for (int64_t d : t.shape) {
        if (d < 0) return InvalidArgument("{}: tensor '{}' has negative dimension in shape {}", path, name,
                                          ShapeStr(t.shape));
      }
      std::optional<uint64_t> want = ByteSize(t.shape, t.dtype);
      if (!want || *want != t.bytes.size()) {
        return InvalidArgument("{}: tensor '{}' has {} bytes but {} {} needs {}", path, name, t.bytes.size(),
                               DTypeName(t.dtype), ShapeStr(t.shape), want ? *want : 0);
      }
    }

    // Lay out widest elements first (as the Python library does): with an 8-aligned buffer start
    // every tensor then sits at a multiple of its element size, with no gaps that strict readers
    // would reject.
    std::vector<const std::string*> order;
    for (const auto& kv : tensors) order.push_back(&kv.first);
    std::stable_sort(order.begin(), order.end(), [&](const std::string* a, const std::string* b) {
      return DTypeSize(tensors.at(*a).dtype) > DTypeSize(tensors.at(*b).dtype);
    });

    json header = json::object();  // std::map-backed, so keys come out sorted
    uint64_t offset = 0;
    for (const std::string* name : order) {
      const TensorToWrite& t = tensors.at(*name);
      header[*name] = {{"dtype", DTypeName(t.dtype)},
                       {"shape", t.shape},
                       {"data_offsets", json::array({offset, offset + t.bytes.size()})}};
      offset += t.bytes.size();
    }
    if (!metadata.empty()) header[std::string(kMetadataKey)] = metadata;

    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // JSON allows trailing spaces; keeps data 8-aligned
    const uint64_t header_len = text.size();

    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) return Internal("{}: cannot create: {}", path, ErrnoStr(errno));
    out.write(reinterpret_cast<const char*>(&header_len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const std::string* name : order) {
      const auto& bytes = tensors.at(*name).bytes;
      out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    }
    out.close();
    if (!out) return Internal("{}: write failed: {}", path, ErrnoStr(errno));
    return Status::Ok();
  } catch (const std::exception& e) {  // e.g. json::type_error on a name that is not UTF-8
    return InvalidArgument("{}: cannot write: {}", path, e.what());
  }
}

}  // namespace specd
