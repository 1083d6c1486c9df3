#include "server/metrics_http.h"

#include <chrono>

#include <httplib.h>

namespace specd::serve {

MetricsHttpServer::MetricsHttpServer() = default;
MetricsHttpServer::~MetricsHttpServer() { Stop(); }

Status MetricsHttpServer::Start(const std::string& host, int port, const Metrics* metrics) {
  http_ = std::make_unique<httplib::Server>();
  http_->Get("/metrics", [metrics](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics->Render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  if (!http_->bind_to_port(host, port)) {
    return Status(StatusCode::kUnavailable, fmt::format("cannot listen for /metrics on {}:{}", host, port));
  }
  thread_ = std::thread([this] { http_->listen_after_bind(); });
  return Status::Ok();
}

void MetricsHttpServer::Stop() {
  if (!thread_.joinable()) return;
  // httplib's stop() does nothing before the listen loop runs: wait for it to start.
  for (int i = 0; i < 1000 && !http_->is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  http_->stop();
  thread_.join();
}

}  // namespace specd::serve
