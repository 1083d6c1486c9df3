#include "tokenizer/byte_level.h"

#include <array>

#include "tokenizer/utf8.h"

namespace specd::byte_level {
namespace {

struct Tables {
  std::array<std::string, 256> byte_to_char;
  std::array<int16_t, 324> cp_to_byte;  // mapped code points are all < 324; -1 = unmapped

  Tables() {
    cp_to_byte.fill(-1);
    // Printable Latin-1 bytes stand for themselves; the rest are shifted to 256 + n in byte
    // order. This is the exact table of GPT-2's bytes_to_unicode().
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const int cp = printable ? b : next++;
      cp_to_byte[cp] = static_cast<int16_t>(b);
      std::string& s = byte_to_char[b];
      if (cp < 0x80) {
        s.push_back(static_cast<char>(cp));
      } else {
        s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
    }
  }
};

const Tables& T() {
  static const Tables t;
  return t;
}

}  // namespace

const std::string& ByteToChar(uint8_t b) { return T().byte_to_char[b]; }

std::optional<std::string> CharsToBytes(std::string_view token) {
  const Tables& t = T();
  std::string out;
  out.reserve(token.size());
  size_t i = 0;
  while (i < token.size()) {
    if (utf8::ScanOne(token, i).kind != utf8::SeqKind::kValid) return std::nullopt;
    size_t len = 0;
    const char32_t cp = utf8::DecodeValid(token, i, &len);
    if (cp >= t.cp_to_byte.size() || t.cp_to_byte[cp] < 0) return std::nullopt;
    out.push_back(static_cast<char>(t.cp_to_byte[cp]));
    i += len;
  }
  return out;
}

}  // namespace specd::byte_level
