#include "server/serve_security.h"

#include <fstream>
#include <iterator>

namespace specd::serve {
namespace {

StatusOr<std::string> ReadFileText(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return InvalidArgument("cannot read the {} file {}", what, path);
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return text;
}

}  // namespace

StatusOr<Security> LoadSecurity(const ServeOptions& o) {
  Security s;
  if (o.tls_cert.empty() != o.tls_key.empty()) return InvalidArgument("--tls-cert and --tls-key go together");
  if (!o.tls_cert.empty()) {
    grpc::SslServerCredentialsOptions ssl;
    grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
    SPECD_ASSIGN_OR_RETURN(pair.cert_chain, ReadFileText(o.tls_cert, "TLS certificate"));
    SPECD_ASSIGN_OR_RETURN(pair.private_key, ReadFileText(o.tls_key, "TLS key"));
    if (pair.cert_chain.find("-----BEGIN") == std::string::npos || pair.private_key.find("-----BEGIN") == std::string::npos) {
      return InvalidArgument("--tls-cert / --tls-key must be PEM files");
    }
    ssl.pem_key_cert_pairs.push_back(std::move(pair));
    s.credentials = grpc::SslServerCredentials(ssl);
  } else {
    s.credentials = grpc::InsecureServerCredentials();
  }
  if (!o.api_key_file.empty()) {
    SPECD_ASSIGN_OR_RETURN(std::string text, ReadFileText(o.api_key_file, "API key"));
    s.api_key = text.substr(0, text.find_first_of("\r\n"));
    if (s.api_key.size() < 16) return InvalidArgument("the API key in {} is shorter than 16 characters", o.api_key_file);
    for (char c : s.api_key) {
      if (c < 0x21 || c > 0x7e) return InvalidArgument("the API key in {} must be printable ASCII without spaces", o.api_key_file);
    }
  }
  return s;
}

}  // namespace specd::serve
