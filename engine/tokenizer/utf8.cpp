#include "tokenizer/utf8.h"

#include <cstring>

namespace specd::utf8 {
namespace {

// Allowed range of the second byte for a lead byte (Unicode Table 3-7): this is where
// overlongs, surrogates and code points above U+10FFFF are excluded.
struct Lead {
  uint8_t len;  // 0 = never valid as a lead byte
  uint8_t lo;
  uint8_t hi;
};

constexpr Lead LeadInfo(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b < 0xC2) return {0, 0, 0};
  if (b < 0xE0) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b < 0xF0) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b < 0xF4) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

}  // namespace

Seq ScanOne(std::string_view s, size_t pos) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const size_t n = s.size();
  const Lead lead = LeadInfo(p[pos]);
  if (lead.len == 1) return {SeqKind::kValid, 1};
  if (lead.len == 0) return {SeqKind::kInvalid, 1};
  size_t i = 1;
  for (; i < lead.len; ++i) {
    if (pos + i >= n) return {SeqKind::kIncomplete, i};
    const uint8_t c = p[pos + i];
    const uint8_t lo = i == 1 ? lead.lo : 0x80;
    const uint8_t hi = i == 1 ? lead.hi : 0xBF;
    if (c < lo || c > hi) return {SeqKind::kInvalid, i};
  }
  return {SeqKind::kValid, lead.len};
}

std::optional<size_t> FirstInvalidByte(std::string_view s) {
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // Source text is mostly ASCII: skip 8 bytes at a time while no high bit is set.
    if (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, s.data() + i, 8);
      if ((w & 0x8080808080808080ULL) == 0) {
        i += 8;
        continue;
      }
    }
    const Seq q = ScanOne(s, i);
    if (q.kind != SeqKind::kValid) return i;
    i += q.len;
  }
  return std::nullopt;
}

void AppendLossy(std::string_view s, std::string& out) {
  size_t i = 0;
  size_t run = 0;  // start of the pending run of valid bytes, copied in one append
  while (i < s.size()) {
    const Seq q = ScanOne(s, i);
    if (q.kind == SeqKind::kValid) {
      i += q.len;
      continue;
    }
    out.append(s.substr(run, i - run));
    out.append(kReplacement);
    i += q.len;
    run = i;
  }
  out.append(s.substr(run));
}

char32_t DecodeValid(std::string_view s, size_t pos, size_t* len) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data()) + pos;
  if (p[0] < 0x80) {
    *len = 1;
    return p[0];
  }
  if (p[0] < 0xE0) {
    *len = 2;
    return (char32_t(p[0] & 0x1F) << 6) | (p[1] & 0x3F);
  }
  if (p[0] < 0xF0) {
    *len = 3;
    return (char32_t(p[0] & 0x0F) << 12) | (char32_t(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
  }
  *len = 4;
  return (char32_t(p[0] & 0x07) << 18) | (char32_t(p[1] & 0x3F) << 12) |
         (char32_t(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

bool IsWhiteSpace(char32_t c) {
  if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D);
  switch (c) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F:
    case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

}  // namespace specd::utf8
