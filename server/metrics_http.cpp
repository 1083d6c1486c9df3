#include "server/metrics_http.h"

#include <chrono>

#include <httplib.h>

namespace specd::serve {

MetricsHttpServer::MetricsHttpServer() = default;
MetricsHttpServer::~MetricsHttpServer() { Stop(); }

Status MetricsHttpServer::Start(const std::string& host, int port, const Metrics* metrics) {
  http_ = std::make_unique<httplib::Server>();
  // httplib serves a connection per worker thread, and an idle connection holds its worker until
  // the read timeout: with its defaults (a pool of max(8, cores - 1), 5 s) eight idle connections
  // made a scrape wait seconds. A wide pool and short timeouts keep a worker free for the scraper
  // behind 100+ idle connections, and shed idle ones within two seconds.
  http_->new_task_queue = [] { return new httplib::ThreadPool(kWorkers); };
  http_->set_read_timeout(2, 0);
  http_->set_write_timeout(2, 0);
  http_->set_keep_alive_timeout(2);
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
