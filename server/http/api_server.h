// The OpenAI-compatible HTTP API (`specd serve --http-port P`) beside gRPC: POST
// /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health. Requests go to the
// same batcher as gRPC's. cpp-httplib serves each connection on a worker of its pool; a
// streaming response holds its worker and waits on the request's Exchange between steps, so a
// slow or vanished client never holds up the batcher (docs/server.md: endpoints, errors).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "server/batcher.h"
#include "server/http/openai_request.h"
#include "server/metrics.h"

namespace httplib {
class Server;
}

namespace specd::serve::http {

struct ApiServerOptions {
  std::string host = "0.0.0.0";
  int port = 0;                    // 0: any free port (see port())
  std::string tls_cert, tls_key;   // PEM files: HTTPS
  std::string api_key;             // empty: none; else "Authorization: Bearer <key>" on /v1/*
  size_t max_body_bytes = 4 << 20;  // larger bodies: 413
  int workers = 256;               // connections served at once (streams hold one each); at most kMaxWorkers
  int64_t max_context = 0;         // for /v1/models
};

class ApiServer {
 public:
  static constexpr int kMaxWorkers = 2048;
  ApiServer(Batcher* batcher, Metrics* metrics, ApiContext ctx);
  ~ApiServer();
  // Binds now (a taken port or bad TLS files are errors at startup), then serves in the background.
  Status Start(const ApiServerOptions& opt);
  int port() const { return port_; }
  // SIGTERM: /health answers 503 from now on (new requests get 503 from the batcher).
  void SetDraining() { draining_.store(true); }
  // Responses still being written (streams, and bodies that wait for their request): the drain
  // waits for them after the batcher is idle, so that finished streams reach [DONE].
  int live_responses() const { return live_.load(); }
  void Stop();

 private:
  void Routes();
  bool Authorized(const std::string& authorization) const;

  Batcher* batcher_;
  Metrics* metrics_;
  ApiContext ctx_;
  ApiServerOptions opt_;
  int64_t created_ = 0;  // unix seconds at start: /v1/models' "created"
  std::atomic<bool> draining_{false};
  std::atomic<int> live_{0};
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace specd::serve::http
