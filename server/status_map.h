// specd::Status <-> gRPC status. The engine's codes mirror gRPC's numerically (util/status.h).
#pragma once

#include <grpcpp/support/status.h>

#include "util/status.h"

namespace specd::serve {

inline grpc::Status ToGrpc(const Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(static_cast<int>(s.code())), s.message());
}

// The canonical upper-case name (INVALID_ARGUMENT, ...), as metrics labels and logs use it.
const char* GrpcCodeName(grpc::StatusCode c);

}  // namespace specd::serve
