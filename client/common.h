// Pieces every specd-client subcommand uses: the channel, status printing, id lists.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "grpc_code_name.h"

namespace specd::client {

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address);

// "INVALID_ARGUMENT: message" on stderr, the shape scripts and tests look for.
void PrintStatus(const grpc::Status& s);

// "1,2,3" (spaces allowed) -> ids; nullopt (and a message in *error) when malformed.
std::optional<std::vector<int32_t>> ParseIds(const std::string& s, std::string* error);

}  // namespace specd::client
