#include "server/serve_main.h"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string_view>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "server/batcher.h"
#include "server/http/api_server.h"
#include "server/metrics.h"
#include "server/metrics_http.h"
#include "server/serve_models.h"
#include "server/serve_security.h"
#include "server/service.h"

#ifndef SPECD_VERSION
#define SPECD_VERSION "dev"
#endif

namespace specd::serve {
namespace {

using Clock = std::chrono::steady_clock;

std::string HostPort(const std::string& host, int port) {
  const bool v6 = host.find(':') != std::string::npos && host.front() != '[';
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

Status WritePortFile(const std::string& path, int port, int metrics_port, int http_port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    f << nlohmann::json{{"port", port}, {"metrics_port", metrics_port}, {"http_port", http_port}}.dump() << "\n";
    if (!f) return Internal("cannot write {}", tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);  // atomic: a reader never sees half a file
  if (ec) return Internal("cannot write {}: {}", path, ec.message());
  return Status::Ok();
}

// What GetModelInfo answers.
v1::ModelInfo DescribeModel(const ServeOptions& o, const ServingModels& m) {
  const ModelConfig& cfg = m.target->config();
  v1::ModelInfo info;
  info.set_model(m.embedded ? "embedded-default (models/demo: trained demo pair)" : m.model_dir);
  info.set_model_type(cfg.model_type);
  info.set_vocab_size(static_cast<uint64_t>(cfg.vocab_size));
  info.set_num_layers(static_cast<uint32_t>(cfg.num_hidden_layers));
  info.set_hidden_size(static_cast<uint32_t>(cfg.hidden_size));
  info.set_drafter(m.drafters.empty() ? "none" : m.drafters.front());
  for (const std::string& d : m.drafters) info.add_drafters(d);
  info.set_draft_model(m.serves("draft") ? (m.embedded ? "embedded-default draft" : m.draft_dir) : "");
  info.set_default_k(static_cast<uint32_t>(m.engine.default_k));
  info.set_max_context(static_cast<uint64_t>(m.max_context));
  info.set_device(o.device);
  info.set_max_batch(static_cast<uint32_t>(o.max_batch));
  for (int32_t e : cfg.eos_token_ids) info.add_eos_token_ids(e);
  info.set_version(SPECD_VERSION);
  info.set_has_tokenizer(m.text->has_tokenizer());
  info.set_max_k(static_cast<uint32_t>(o.max_k));
  info.set_max_queue(static_cast<uint32_t>(o.max_queue));
  info.set_weight_format(m.weight_format);
  for (const MemoryPart& p : m.memory.parts) {
    auto* part = info.add_memory_plan();
    part->set_name(p.name);
    part->set_bytes(static_cast<uint64_t>(p.bytes));
    part->set_estimate(p.estimate);
  }
  info.set_memory_budget_bytes(m.memory.budget > 0 ? static_cast<uint64_t>(m.memory.budget) : 0);
  info.set_kv_cache_tokens(static_cast<uint64_t>(m.memory.kv_tokens));
  info.set_prefix_cache(m.engine.prefix_cache_entries > 0);
  if (info.prefix_cache()) {
    info.set_prefix_cache_entries(static_cast<uint32_t>(m.engine.prefix_cache_entries));
    info.set_prefix_cache_tokens(static_cast<uint64_t>(m.engine.prefix_cache_tokens));
  }
  return info;
}

// The model's name on the HTTP API: --served-model-name, else the model folder's name.
std::string ServedModelName(const ServeOptions& o, const ServingModels& m) {
  if (!o.served_model_name.empty()) return o.served_model_name;
  if (m.embedded) return "specd-demo";
  std::filesystem::path p(m.model_dir);
  if (!p.has_filename()) p = p.parent_path();  // "models/x/" names x
  return p.filename().string();
}

// Waits up to `timeout` for SIGINT/SIGTERM (blocked in every thread); returns it, or 0.
int WaitSignal(const sigset_t& set, std::chrono::milliseconds timeout) {
  timespec ts{static_cast<time_t>(timeout.count() / 1000), static_cast<long>((timeout.count() % 1000) * 1000000)};
  const int s = sigtimedwait(&set, nullptr, &ts);
  return s > 0 ? s : 0;
}

}  // namespace

Status RunServe(const ServeOptions& o) {
  spdlog::set_level(spdlog::level::from_str(o.log_level));
  // Signals are taken synchronously (sigtimedwait) by this thread: block them before any
  // other thread (OpenMP, gRPC, httplib) exists, so that every thread inherits the mask.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  SPECD_ASSIGN_OR_RETURN(Security security, LoadSecurity(o));
  SPECD_ASSIGN_OR_RETURN(ServingModels models, LoadServingModels(o));
  const ModelConfig& cfg = models.target->config();
  const std::string drafter = models.drafter_list();

  Metrics metrics;
  {
    std::vector<std::pair<std::string, int64_t>> parts;
    for (const MemoryPart& p : models.memory.parts) parts.emplace_back(p.name, p.bytes);
    metrics.SetMemoryPlan(std::move(parts), models.memory.budget);
  }
  Batcher batcher(models.MakeEngineFactory(), models.text.get(), &metrics,
                  BatcherOptions{o.max_batch, o.max_queue, drafter, o.debug_fail_step});
  SPECD_RETURN_IF_ERROR(batcher.Start());
  if (o.debug_fail_alloc > 0) models.backend->InjectAllocFailures(o.debug_fail_alloc - 1, 1);

  const v1::ModelInfo info = DescribeModel(o, models);
  ServeLimits limits{cfg.vocab_size, models.max_context, o.max_k, models.drafters};
  SpecdService service(&batcher, models.text.get(), &metrics, limits, info, security.api_key);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(HostPort(o.host, o.port), security.credentials, &bound_port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(o.max_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, o.max_concurrent_streams);
  if (o.keepalive_seconds > 0) {
    // Ping idle connections, drop those that do not answer: half-open TCP connections (a client
    // host that vanished) do not hold streams forever.
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, o.keepalive_seconds * 1000);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20000);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  }
  // gRPC sets SO_REUSEPORT by default: a second daemon on the same port would start and take
  // half the connections. Refuse instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || bound_port == 0) {
    batcher.Stop();
    return Status(StatusCode::kUnavailable, fmt::format("cannot listen on {}", HostPort(o.host, o.port)));
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(true);

  MetricsHttpServer metrics_http;
  if (o.metrics_port > 0) {
    Status st = metrics_http.Start(o.host, o.metrics_port, &metrics);
    if (!st.ok()) {
      server->Shutdown();
      batcher.Stop();
      return st;
    }
  }
  http::ApiServer api(&batcher, &metrics,
                      http::ApiContext{limits, models.text.get(), ServedModelName(o, models)});
  if (o.http_port >= 0) {
    http::ApiServerOptions ho;
    ho.host = o.host;
    ho.port = o.http_port;
    ho.tls_cert = o.tls_cert;
    ho.tls_key = o.tls_key;
    ho.api_key = security.api_key;
    ho.max_body_bytes = static_cast<size_t>(o.max_message_bytes);
    // A streaming response holds a worker: room for every running and queued request, and more.
    ho.workers = o.max_batch + o.max_queue + 64;
    ho.max_context = models.max_context;
    Status st = api.Start(ho);
    if (!st.ok()) {
      server->Shutdown();
      batcher.Stop();
      metrics_http.Stop();
      return st;
    }
  }
  if (!o.port_file.empty()) {
    SPECD_RETURN_IF_ERROR(WritePortFile(o.port_file, bound_port, o.metrics_port, o.http_port >= 0 ? api.port() : -1));
  }
  spdlog::info("specd {} serving on {} (model {}, drafter {}, k {}, max-batch {}, max-queue {}, context {}, "
               "device {}, tokenizer {}){}",
               SPECD_VERSION, HostPort(o.host, bound_port), models.model_dir, drafter, models.engine.default_k,
               o.max_batch, o.max_queue, models.max_context, o.device, models.text->has_tokenizer() ? "yes" : "none",
               o.metrics_port > 0 ? fmt::format("; metrics on http://{}/metrics", HostPort(o.host, o.metrics_port))
                                  : std::string());
  if (o.http_port >= 0) {
    spdlog::info("OpenAI-compatible API on {}://{}/v1 (model name '{}')", o.tls_cert.empty() ? "http" : "https",
                 HostPort(o.host, api.port()), ServedModelName(o, models));
  }

  int sig = 0;
  while (sig == 0) sig = WaitSignal(sigs, std::chrono::milliseconds(1000));

  // ---- drain: NOT_SERVING, refuse new work, let in-flight requests finish within the grace ----
  spdlog::info("{}: draining (health NOT_SERVING, new requests refused, grace {} s)", strsignal(sig),
               o.grace_seconds);
  health->SetServingStatus(false);
  api.SetDraining();
  batcher.BeginDrain();
  const auto grace_end = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                            std::chrono::duration<double>(o.grace_seconds));
  while (!batcher.Idle() && Clock::now() < grace_end) {
    if (WaitSignal(sigs, std::chrono::milliseconds(20)) != 0) {
      spdlog::warn("second signal: cancelling in-flight requests now");
      break;
    }
  }
  if (!batcher.Idle()) {
    spdlog::warn("grace period over: cancelling the requests still in flight");
    batcher.CancelAll(Unavailable("server shut down before the request finished"));
    const auto hard_end = Clock::now() + std::chrono::seconds(5);
    while (!batcher.Idle() && Clock::now() < hard_end) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // HTTP responses of finished requests may still be on their way to slow clients.
  const auto http_end = Clock::now() + std::chrono::seconds(5);
  while (api.live_responses() > 0 && Clock::now() < http_end) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  api.Stop();  // before the batcher: its streams wake the batcher when they end
  batcher.Stop();
  metrics_http.Stop();
  spdlog::info("stopped");
  return Status::Ok();
}

}  // namespace specd::serve
