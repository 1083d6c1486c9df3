#include "client/common.h"

#include <grpcpp/support/client_interceptor.h>

#include <charconv>
#include <climits>
#include <cstdio>
#include <fstream>
#include <iterator>

namespace specd::client {

namespace {

ConnectionOptions g_connection;

// Adds the API key to every call's metadata (call credentials would need a TLS channel; the key
// is also accepted over plaintext, e.g. on loopback, as the threat model in docs/server.md says).
class AuthInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit AuthInterceptor(const std::string& header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* m) override {
    if (m->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      m->GetSendInitialMetadata()->insert({"authorization", header_});
    }
    m->Proceed();
  }

 private:
  const std::string& header_;
};

class AuthInterceptorFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit AuthInterceptorFactory(std::string key) : header_("Bearer " + std::move(key)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
    return new AuthInterceptor(header_);
  }

 private:
  const std::string header_;  // outlives the channel's interceptors: the factory is the channel's
};

bool ReadText(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  out->assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return true;
}

}  // namespace

bool SetConnectionOptions(const std::string& tls_ca_file, const std::string& api_key_file, std::string* error) {
  ConnectionOptions c;
  if (tls_ca_file == "system") {
    c.tls_ca = "system";
  } else if (!tls_ca_file.empty() && !ReadText(tls_ca_file, &c.tls_ca)) {
    *error = "cannot read the TLS CA file " + tls_ca_file;
    return false;
  }
  if (!api_key_file.empty()) {
    std::string text;
    if (!ReadText(api_key_file, &text)) {
      *error = "cannot read the API key file " + api_key_file;
      return false;
    }
    c.api_key = text.substr(0, text.find_first_of("\r\n"));
  }
  g_connection = std::move(c);
  return true;
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address) {
  grpc::ChannelArguments args;
  // Long generations stream for minutes; keep the connection alive through idle proxies.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!g_connection.tls_ca.empty()) {
    grpc::SslCredentialsOptions ssl;
    if (g_connection.tls_ca != "system") ssl.pem_root_certs = g_connection.tls_ca;
    creds = grpc::SslCredentials(ssl);
  }
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  if (!g_connection.api_key.empty()) interceptors.push_back(std::make_unique<AuthInterceptorFactory>(g_connection.api_key));
  return grpc::experimental::CreateCustomChannelWithInterceptors(address, creds, args, std::move(interceptors));
}

void PrintStatus(const grpc::Status& s) {
  std::fprintf(stderr, "%s: %s\n", GrpcCodeName(s.error_code()), s.error_message().c_str());
}

}  // namespace specd::client
