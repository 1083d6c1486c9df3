#pragma once

#include <string>

#include "server/cli_common.h"

namespace specd::cli {

struct LogitsArgs {
  std::string model, ids, device = "cpu", out;
  int64_t split = 0;
  std::string quantize = "none";  // none | fp8
};
Status RunLogits(const LogitsArgs& a);

}  // namespace specd::cli
