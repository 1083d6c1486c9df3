// Helpers shared by the CLI subcommands.
#pragma once

#include <string>
#include <vector>

#include "util/status.h"

namespace specd::cli {

// Parses "1,2,3" (spaces allowed) into token ids.
StatusOr<std::vector<int32_t>> ParseIds(const std::string& s);

}  // namespace specd::cli
