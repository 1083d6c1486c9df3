#include "tokenizer/nfc.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uniset.h>

namespace specd::tokenizer_internal {
namespace {

// Every code point below U+0300 is NFC_Quick_Check=Yes and never combines with what precedes
// it, so text whose bytes are all below 0xCC (the first lead byte of U+0300) is already NFC.
// This skips ICU entirely for ASCII / Latin-1 heavy text such as source code.
bool TriviallyNfc(std::string_view s) {
  for (unsigned char c : s) {
    if (c >= 0xCC) return false;
  }
  return true;
}

}  // namespace

struct Nfc::Impl {
  icu::UnicodeSet assigned_by_9;  // must outlive `filtered`, which keeps a reference
  std::unique_ptr<icu::FilteredNormalizer2> filtered;
};

Nfc::Nfc(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Nfc::~Nfc() = default;

StatusOr<std::unique_ptr<Nfc>> Nfc::Create() {
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(err);
  if (U_FAILURE(err) || nfc == nullptr) {
    return Internal("ICU: cannot load NFC data: {}", u_errorName(err));
  }
  auto impl = std::make_unique<Impl>();
  // [:age=9.0:] is every character assigned in Unicode 9.0 or earlier.
  impl->assigned_by_9.applyPattern(icu::UnicodeString(u"[:age=9.0:]"), err);
  if (U_FAILURE(err)) return Internal("ICU: cannot build [:age=9.0:]: {}", u_errorName(err));
  impl->assigned_by_9.freeze();
  impl->filtered = std::make_unique<icu::FilteredNormalizer2>(*nfc, impl->assigned_by_9);
  return std::unique_ptr<Nfc>(new Nfc(std::move(impl)));
}

StatusOr<std::string_view> Nfc::Normalize(std::string_view in, std::string& scratch) const {
  if (TriviallyNfc(in)) return in;
  const icu::StringPiece sp(in.data(), static_cast<int32_t>(in.size()));
  UErrorCode err = U_ZERO_ERROR;
  if (impl_->filtered->isNormalizedUTF8(sp, err) && U_SUCCESS(err)) return in;
  err = U_ZERO_ERROR;
  scratch.clear();
  icu::StringByteSink<std::string> sink(&scratch, static_cast<int32_t>(in.size()));
  impl_->filtered->normalizeUTF8(0, sp, sink, nullptr, err);
  if (U_FAILURE(err)) return Internal("ICU: NFC failed: {}", u_errorName(err));
  return std::string_view(scratch);
}

}  // namespace specd::tokenizer_internal
