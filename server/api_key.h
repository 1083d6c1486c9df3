// The API key check both front ends make (gRPC metadata and the HTTP header carry the same
// `Bearer <key>`): constant time in the key, so the comparison does not stop at the first
// differing byte. An empty key accepts everything (no --api-key-file).
#pragma once

#include <string>
#include <string_view>

namespace specd::serve {

inline bool BearerMatches(std::string_view authorization, const std::string& api_key) {
  if (api_key.empty()) return true;
  const std::string want = "Bearer " + api_key;
  if (authorization.size() != want.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < want.size(); ++i) diff |= static_cast<unsigned char>(authorization[i] ^ want[i]);
  return diff == 0;
}

}  // namespace specd::serve
