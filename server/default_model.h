// The embedded default model pair (models/demo: a small Qwen3.5 target and draft trained on
// Python source by tools/train_demo.py, with their byte-level tokenizer), linked into the binary so that `specd serve` with no
// flags works on a fresh machine. The loader reads folders, so the files are written once to a
// cache folder keyed by their content hash and loaded from there.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "util/status.h"

namespace specd::serve {

struct EmbeddedFile {
  const char* path;  // relative to models/demo, e.g. "target/config.json"
  const unsigned char* begin;
  const unsigned char* end;
};

// Defined in the build-generated default_model_data.cpp.
extern const EmbeddedFile kEmbeddedDefaultFiles[];
extern const size_t kEmbeddedDefaultFileCount;

struct DefaultModelDirs {
  std::string target, draft;  // the target folder also holds tokenizer.json
};

// Writes the embedded files under `cache_root` (empty: $XDG_CACHE_HOME/specd, else
// ~/.cache/specd, else the temp dir) in specd-default-<hash>/ unless already there. Safe when
// several processes start at once (each writes a private temp folder, then renames it).
StatusOr<DefaultModelDirs> MaterializeDefaultModel(const std::string& cache_root = "");

}  // namespace specd::serve
