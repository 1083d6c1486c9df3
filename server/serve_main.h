// `specd serve`: loads the models, starts the batcher, the gRPC server and /metrics, and
// runs until SIGTERM/SIGINT, then drains (docs/server.md).
#pragma once

#include "server/serve_options.h"
#include "util/status.h"

namespace specd::serve {

Status RunServe(const ServeOptions& o);

}  // namespace specd::serve
