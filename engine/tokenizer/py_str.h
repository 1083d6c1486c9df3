// The few Python str operations the chat templates call with one character or separator
// (s.lstrip(c), s.rstrip(c), s.split(sep)[0], s.split(sep)[-1]), shared by the Qwen3 and the
// Qwen3.5 renderer.
#pragma once

#include <string_view>

namespace specd::py_str {

inline std::string_view LStrip(std::string_view s, char c) {
  while (!s.empty() && s.front() == c) s.remove_prefix(1);
  return s;
}
inline std::string_view RStrip(std::string_view s, char c) {
  while (!s.empty() && s.back() == c) s.remove_suffix(1);
  return s;
}
inline std::string_view Strip(std::string_view s, char c) { return RStrip(LStrip(s, c), c); }
inline std::string_view BeforeFirst(std::string_view s, std::string_view sep) {
  const size_t p = s.find(sep);
  return p == std::string_view::npos ? s : s.substr(0, p);
}
inline std::string_view AfterLast(std::string_view s, std::string_view sep) {
  const size_t p = s.rfind(sep);
  return p == std::string_view::npos ? s : s.substr(p + sep.size());
}

}  // namespace specd::py_str
