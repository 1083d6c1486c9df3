// specd::Status <-> gRPC status. The engine's codes mirror gRPC's numerically (util/status.h).
#pragma once

#include <grpcpp/support/status.h>

#include "grpc_code_name.h"
#include "util/status.h"

namespace specd::serve {

inline grpc::Status ToGrpc(const Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(static_cast<int>(s.code())), s.message());
}

using specd::GrpcCodeName;  // proto/grpc_code_name.h: metrics labels and logs use it

}  // namespace specd::serve
