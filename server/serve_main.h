// `specd serve`: loads the models, starts the scheduler, the gRPC server and /metrics, and
// runs until SIGTERM/SIGINT, then drains (DESIGN.md §6, §7).
#pragma once

#include "server/serve_options.h"
#include "util/status.h"

namespace specd::serve {

Status RunServe(const ServeOptions& o);

}  // namespace specd::serve
