#include "tokenizer/added_tokens.h"

#include <algorithm>
#include <cstring>

#include "tokenizer/utf8.h"

namespace specd::tokenizer_internal {
namespace {

// Start of the run of White_Space characters that ends at `end`.
size_t WhiteSpaceRunBefore(std::string_view s, size_t end, size_t floor) {
  size_t start = end;
  while (start > floor) {
    size_t p = start - 1;
    while (p > floor && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) --p;
    size_t len = 0;
    if (!utf8::IsWhiteSpace(utf8::DecodeValid(s, p, &len))) break;
    start = p;
  }
  return start;
}

size_t WhiteSpaceRunAfter(std::string_view s, size_t begin) {
  size_t p = begin;
  while (p < s.size()) {
    size_t len = 0;
    if (!utf8::IsWhiteSpace(utf8::DecodeValid(s, p, &len))) break;
    p += len;
  }
  return p;
}

// True when [b, e) shares a byte with a literal range (ranges sorted; `hint` walks forward with
// the scan, which only moves right).
bool TouchesLiteral(std::span<const LiteralRange> literal, size_t& hint, size_t b, size_t e) {
  while (hint < literal.size() && literal[hint].end <= b) ++hint;
  return hint < literal.size() && literal[hint].begin < e;
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  for (uint32_t i = 0; i < tokens_.size(); ++i) {
    has_special_ = has_special_ || tokens_[i].special;
    by_first_[static_cast<uint8_t>(tokens_[i].content[0])].push_back(i);
  }
  int firsts = 0;
  for (int b = 0; b < 256; ++b) {
    auto& v = by_first_[b];
    if (v.empty()) continue;
    ++firsts;
    single_first_ = b;
    std::stable_sort(v.begin(), v.end(), [&](uint32_t x, uint32_t y) {
      return tokens_[x].content.size() > tokens_[y].content.size();
    });
  }
  if (firsts != 1) single_first_ = -1;
}

void AddedTokenMatcher::Split(std::string_view text, std::vector<Segment>& out,
                              std::span<const LiteralRange> literal) const {
  const size_t n = text.size();
  size_t hint = 0;
  size_t emitted = 0;  // end of the last segment pushed
  size_t pos = 0;
  while (pos < n) {
    if (single_first_ >= 0) {
      const void* hit = std::memchr(text.data() + pos, single_first_, n - pos);
      if (hit == nullptr) break;
      pos = static_cast<const char*>(hit) - text.data();
    }
    const auto& cands = by_first_[static_cast<uint8_t>(text[pos])];
    const AddedToken* match = nullptr;
    for (uint32_t idx : cands) {
      const std::string& c = tokens_[idx].content;
      if (c.size() <= n - pos && std::memcmp(text.data() + pos, c.data(), c.size()) == 0) {
        // A special token spelled inside literal text stays text; a shorter candidate may match.
        if (tokens_[idx].special && TouchesLiteral(literal, hint, pos, pos + c.size())) continue;
        match = &tokens_[idx];
        break;
      }
    }
    if (match == nullptr) {
      ++pos;
      continue;
    }
    size_t start = pos;
    size_t stop = pos + match->content.size();
    if (match->lstrip) start = WhiteSpaceRunBefore(text, start, emitted);
    if (match->rstrip) stop = WhiteSpaceRunAfter(text, stop);
    if (start > emitted) out.push_back({emitted, start, -1});
    out.push_back({start, stop, match->id});
    emitted = pos = stop;
  }
  if (emitted < n) out.push_back({emitted, n, -1});
}

}  // namespace specd::tokenizer_internal
