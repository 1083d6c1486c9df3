// Pieces every specd-client subcommand uses: the channel, status printing, id lists.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "grpc_code_name.h"
#include "util/id_list.h"  // ParseIdList: the one id-list parser of specd and specd-client

namespace specd::client {

// How every channel of this process connects: TLS (with this CA's PEM, or the system's roots when
// tls_ca is "system") and the API key sent as `authorization: Bearer KEY` on every call.
struct ConnectionOptions {
  std::string tls_ca;   // "" = plaintext
  std::string api_key;  // "" = none
};
// Set once, from main, before any channel is made. Returns false (with *error) on a bad file.
bool SetConnectionOptions(const std::string& tls_ca_file, const std::string& api_key_file, std::string* error);

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address);

// "INVALID_ARGUMENT: message" on stderr, the shape scripts and tests look for.
void PrintStatus(const grpc::Status& s);

}  // namespace specd::client
