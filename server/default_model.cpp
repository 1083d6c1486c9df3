#include "server/default_model.h"

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include <fmt/format.h>

namespace specd::serve {
namespace fs = std::filesystem;
namespace {

uint64_t Fnv1a(uint64_t h, const unsigned char* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

uint64_t ContentHash() {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < kEmbeddedDefaultFileCount; ++i) {
    const EmbeddedFile& f = kEmbeddedDefaultFiles[i];
    const std::string_view name(f.path);
    h = Fnv1a(h, reinterpret_cast<const unsigned char*>(name.data()), name.size() + 1);
    h = Fnv1a(h, f.begin, static_cast<size_t>(f.end - f.begin));
  }
  return h;
}

// A folder is complete when every file has its embedded size (the marker is written last, so a
// crash mid-write leaves a folder that is rewritten next time).
bool Complete(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(dir / ".complete", ec)) return false;
  for (size_t i = 0; i < kEmbeddedDefaultFileCount; ++i) {
    const EmbeddedFile& f = kEmbeddedDefaultFiles[i];
    const auto size = fs::file_size(dir / f.path, ec);
    if (ec || size != static_cast<uintmax_t>(f.end - f.begin)) return false;
  }
  return true;
}

Status WriteAll(const fs::path& dir) {
  for (size_t i = 0; i < kEmbeddedDefaultFileCount; ++i) {
    const EmbeddedFile& f = kEmbeddedDefaultFiles[i];
    const fs::path p = dir / f.path;
    std::error_code ec;
    fs::create_directories(p.parent_path(), ec);
    if (ec) return Internal("cannot create {}: {}", p.parent_path().string(), ec.message());
    std::ofstream out(p, std::ios::binary);
    out.write(reinterpret_cast<const char*>(f.begin), static_cast<std::streamsize>(f.end - f.begin));
    out.close();
    if (!out) return Internal("cannot write {}", p.string());
  }
  std::ofstream(dir / ".complete") << "ok\n";
  return Status::Ok();
}

std::vector<fs::path> CacheRoots(const std::string& explicit_root) {
  if (!explicit_root.empty()) return {explicit_root};
  std::vector<fs::path> roots;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) roots.emplace_back(fs::path(x) / "specd");
  if (const char* h = std::getenv("HOME"); h && *h) roots.emplace_back(fs::path(h) / ".cache" / "specd");
  std::error_code ec;
  roots.push_back(fs::temp_directory_path(ec));
  if (ec) roots.emplace_back("/tmp");
  return roots;
}

StatusOr<fs::path> MaterializeUnder(const fs::path& root, const std::string& name) {
  const fs::path dir = root / name;
  if (Complete(dir)) return dir;
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) return Internal("cannot create {}: {}", root.string(), ec.message());
  std::random_device rd;
  const fs::path tmp = root / fmt::format("{}.tmp-{}-{:x}", name, ::getpid(), rd());
  Status st = WriteAll(tmp);
  if (!st.ok()) {
    fs::remove_all(tmp, ec);
    return st;
  }
  // Folders appear complete or not at all (written aside, then renamed), so a failed rename
  // means another process won the race, or a damaged folder is in the way.
  fs::rename(tmp, dir, ec);
  if (ec && !Complete(dir)) {
    fs::remove_all(dir, ec);
    fs::rename(tmp, dir, ec);
  }
  std::error_code ignored;
  fs::remove_all(tmp, ignored);
  if (Complete(dir)) return dir;
  return Internal("cannot create {}", dir.string());
}

}  // namespace

StatusOr<DefaultModelDirs> MaterializeDefaultModel(const std::string& cache_root) {
  const std::string name = fmt::format("specd-default-{:016x}", ContentHash());
  Status last;
  for (const fs::path& root : CacheRoots(cache_root)) {
    auto dir = MaterializeUnder(root, name);
    if (dir.ok()) return DefaultModelDirs{(*dir / "target").string(), (*dir / "draft").string()};
    last = dir.status();
  }
  return Status(last.code(), "cannot write the embedded default model: " + last.message());
}

}  // namespace specd::serve
