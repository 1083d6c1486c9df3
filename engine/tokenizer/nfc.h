// NFC normalisation (ICU), applied to the text between added tokens like HF's NFC normalizer.
//
// HF normalises with tables of Unicode 9.0 (its unicode-normalization-alignments crate):
// characters assigned later have no combining class and no decomposition there, so e.g. the
// Unicode 10 mark U+09FE is not reordered before a mark of lower class. To produce the same
// ids, ICU's NFC is restricted to characters assigned by Unicode 9.0; later ones pass through
// untouched and act as boundaries, exactly as they do in HF.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "util/status.h"

namespace specd::tokenizer_internal {

class Nfc {
 public:
  static StatusOr<std::unique_ptr<Nfc>> Create();
  ~Nfc();

  // Returns `in` itself when it is already normalised (the common case), else the normalised
  // text stored in `scratch`. `in` must be valid UTF-8. Thread-safe.
  StatusOr<std::string_view> Normalize(std::string_view in, std::string& scratch) const;

 private:
  struct Impl;
  explicit Nfc(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace specd::tokenizer_internal
