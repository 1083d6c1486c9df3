#include "server/cli_common.h"

#include <charconv>
#include <cstdint>

namespace specd::cli {

StatusOr<std::vector<int32_t>> ParseIds(const std::string& s) {
  std::vector<int32_t> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == ',')) ++i;
    if (i >= s.size()) break;
    size_t j = i;
    while (j < s.size() && s[j] != ',' && s[j] != ' ') ++j;
    int64_t v = 0;
    auto [p, ec] = std::from_chars(s.data() + i, s.data() + j, v);
    if (ec != std::errc() || p != s.data() + j || v < 0 || v > INT32_MAX) {
      return InvalidArgument("bad token id '{}' in id list", s.substr(i, j - i));
    }
    out.push_back(static_cast<int32_t>(v));
    i = j;
  }
  if (out.empty()) return InvalidArgument("empty id list");
  return out;
}

}  // namespace specd::cli
