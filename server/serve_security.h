// `specd serve`'s transport security: TLS credentials (--tls-cert/--tls-key) and the API key
// (--api-key-file), read and checked before anything else starts (docs/server.md, threat model).
#pragma once

#include <memory>
#include <string>

#include <grpcpp/security/server_credentials.h>

#include "server/serve_options.h"
#include "util/status.h"

namespace specd::serve {

struct Security {
  std::shared_ptr<grpc::ServerCredentials> credentials;  // TLS or insecure
  std::string api_key;  // empty: no key required
};

StatusOr<Security> LoadSecurity(const ServeOptions& o);

}  // namespace specd::serve
