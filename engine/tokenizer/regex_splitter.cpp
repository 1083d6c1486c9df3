#include "tokenizer/regex_splitter.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace specd::tokenizer_internal {
namespace {

// Oniguruma's \s is Unicode White_Space; PCRE2's UCP \s is \p{Z} plus \t-\r, which lacks
// U+0085 (NEL). Spelling the set out makes both engines agree.
constexpr std::string_view kWhiteSpaceItems =
    "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
    "\\x{205F}\\x{3000}";

pcre2_code* Code(void* p) { return static_cast<pcre2_code*>(p); }

std::string PcreError(int rc) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(rc, buf, sizeof(buf));
  return reinterpret_cast<const char*>(buf);
}

}  // namespace

StatusOr<std::string> TranslateOnigPattern(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 64);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\') {
      if (i + 1 >= p.size()) return InvalidArgument("regex: trailing backslash");
      const char e = p[++i];
      switch (e) {
        case 's':
          out += in_class ? std::string(kWhiteSpaceItems) : fmt::format("[{}]", kWhiteSpaceItems);
          continue;
        case 'S':
          if (in_class) return Unimplemented("regex: \\S inside a character class is not supported");
          out += fmt::format("[^{}]", kWhiteSpaceItems);
          continue;
        case 'w': case 'W': case 'b': case 'B': case 'h': case 'H': case 'v': case 'V':
        case 'R': case 'X': case 'A': case 'z': case 'Z': case 'G': case 'K':
          // Their definitions differ between Oniguruma and PCRE2 (or are engine-specific).
          return Unimplemented("regex: escape \\{} is not supported", e);
        default:
          out += c;
          out += e;
          continue;
      }
    }
    if (in_class) {
      if (c == ']') in_class = false;
      if (c == '[' && i + 1 < p.size() && p[i + 1] == ':') {
        return Unimplemented("regex: POSIX bracket classes are not supported");
      }
      out += c;
      continue;
    }
    if (c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal, not the end of the class.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (c == '^' || c == '$') {
      // Ruby syntax anchors at line boundaries, PCRE2 at subject boundaries.
      return Unimplemented("regex: anchor '{}' is not supported", c);
    }
    out += c;
  }
  if (in_class) return InvalidArgument("regex: unterminated character class");
  return out;
}

StatusOr<std::unique_ptr<RegexSplitter>> RegexSplitter::Create(std::string_view onig_pattern) {
  SPECD_ASSIGN_OR_RETURN(const std::string pattern, TranslateOnigPattern(onig_pattern));
  int err = 0;
  PCRE2_SIZE err_off = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &err, &err_off, nullptr);
  if (code == nullptr) {
    return InvalidArgument("tokenizer.json: Split regex does not compile ({} at offset {}): {}",
                           PcreError(err), err_off, onig_pattern);
  }
  std::unique_ptr<RegexSplitter> s(new RegexSplitter());
  s->code_ = code;
  // JIT is an optimisation only: without it (e.g. unsupported CPU) the interpreter is used.
  s->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return s;
}

RegexSplitter::~RegexSplitter() { pcre2_code_free(Code(code_)); }

Status RegexSplitter::Split(std::string_view text, std::vector<Piece>& out) const {
  // Match data is per call: pcre2 code is shareable between threads, match data is not.
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
      pcre2_match_data_create_from_pattern(Code(code_), nullptr), &pcre2_match_data_free);
  if (!md) return ResourceExhausted("regex: out of memory");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  size_t pos = 0;   // where the next search starts
  size_t emit = 0;  // end of the last emitted piece
  while (pos < n) {
    // The whole text was validated once by the caller; re-checking per call would be O(n^2).
    int rc = PCRE2_ERROR_JIT_STACKLIMIT;
    if (jit_) rc = pcre2_jit_match(Code(code_), subject, n, pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      // No JIT, or its machine stack overflowed: the interpreter keeps its backtracking frames
      // on the heap and copes.
      rc = pcre2_match(Code(code_), subject, n, pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) return Internal("regex: match failed at byte {}: {}", pos, PcreError(rc));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    const size_t ms = ov[0], me = ov[1];
    if (me == ms) {
      // An empty match yields no piece; step over one character to make progress.
      pos = ms + 1;
      while (pos < n && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
      continue;
    }
    if (ms > emit) out.push_back({static_cast<uint32_t>(emit), static_cast<uint32_t>(ms)});
    out.push_back({static_cast<uint32_t>(ms), static_cast<uint32_t>(me)});
    emit = pos = me;
  }
  if (emit < n) out.push_back({static_cast<uint32_t>(emit), static_cast<uint32_t>(n)});
  return Status::Ok();
}

}  // namespace specd::tokenizer_internal
