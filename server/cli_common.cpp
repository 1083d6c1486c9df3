#include "server/cli_common.h"

#include "util/id_list.h"

namespace specd::cli {

StatusOr<std::vector<int32_t>> ParseIds(const std::string& s) {
  std::string error;
  auto ids = ParseIdList(s, &error);
  if (!ids) return InvalidArgument("{}", error);
  return std::move(*ids);
}

}  // namespace specd::cli
