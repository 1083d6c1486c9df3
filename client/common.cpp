#include "client/common.h"

#include <charconv>
#include <climits>
#include <cstdio>

namespace specd::client {

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address) {
  grpc::ChannelArguments args;
  // Long generations stream for minutes; keep the connection alive through idle proxies.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

void PrintStatus(const grpc::Status& s) {
  std::fprintf(stderr, "%s: %s\n", GrpcCodeName(s.error_code()), s.error_message().c_str());
}

std::optional<std::vector<int32_t>> ParseIds(const std::string& s, std::string* error) {
  std::vector<int32_t> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == ',')) ++i;
    if (i >= s.size()) break;
    size_t j = i;
    while (j < s.size() && s[j] != ',' && s[j] != ' ') ++j;
    long long v = 0;
    auto [p, ec] = std::from_chars(s.data() + i, s.data() + j, v);
    if (ec != std::errc() || p != s.data() + j || v < INT32_MIN || v > INT32_MAX) {
      *error = "bad token id '" + s.substr(i, j - i) + "' in id list";
      return std::nullopt;
    }
    out.push_back(static_cast<int32_t>(v));
    i = j;
  }
  return out;
}

}  // namespace specd::client
