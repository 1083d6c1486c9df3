// Token-id lists on command lines ("1,2,3" or "1 2 3"): one parser, used by `specd` and by
// `specd-client` (header-only: the client does not link the engine).
// Ids are integers in [0, 2^31 - 1], separated by commas and/or spaces. An empty list, a
// negative number or anything that is not an integer is an error naming the bad entry. Whether
// an id is in a model's vocabulary is for the consumer (the engine, the server) to check.
#pragma once

#include <charconv>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace specd {

inline std::optional<std::vector<int32_t>> ParseIdList(std::string_view s, std::string* error) {
  std::vector<int32_t> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == ',')) ++i;
    if (i >= s.size()) break;
    size_t j = i;
    while (j < s.size() && s[j] != ',' && s[j] != ' ') ++j;
    int64_t v = 0;
    const auto [p, ec] = std::from_chars(s.data() + i, s.data() + j, v);
    if (ec != std::errc() || p != s.data() + j || v < 0 || v > INT32_MAX) {
      *error = "bad token id '" + std::string(s.substr(i, j - i)) + "' in id list (ids are integers in [0, 2147483647])";
      return std::nullopt;
    }
    out.push_back(static_cast<int32_t>(v));
    i = j;
  }
  if (out.empty()) {
    *error = "empty id list";
    return std::nullopt;
  }
  return out;
}

}  // namespace specd
