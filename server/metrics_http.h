// GET /metrics (Prometheus text) over HTTP with cpp-httplib, on its own thread pool.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "server/metrics.h"
#include "util/status.h"

namespace httplib {
class Server;
}

namespace specd::serve {

class MetricsHttpServer {
 public:
  MetricsHttpServer();
  ~MetricsHttpServer();
  // Binds now (so a taken port is an error at startup), then serves in the background.
  Status Start(const std::string& host, int port, const Metrics* metrics);
  void Stop();

 private:
  static constexpr size_t kWorkers = 192;  // connections served at once (idle ones included)
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
};

}  // namespace specd::serve
