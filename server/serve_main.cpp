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
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/health_check_service_interface.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "model/presets.h"
#include "qwen35/model.h"
#include "runtime/backend.h"
#include "server/cli_text.h"
#include "server/default_model.h"
#include "server/metrics.h"
#include "server/metrics_http.h"
#include "server/scheduler.h"
#include "server/service.h"
#include "spec/drafter.h"
#include "spec/engine.h"

#ifndef SPECD_VERSION
#define SPECD_VERSION "dev"
#endif

namespace specd::serve {
namespace {

using Clock = std::chrono::steady_clock;

// Where the models come from, after defaults are applied.
struct Plan {
  std::string model_dir, draft_dir, drafter;
  bool embedded = false;
};

StatusOr<Plan> ResolveModels(const ServeOptions& o) {
  Plan p;
  p.model_dir = o.model;
  p.draft_dir = o.draft;
  if (o.model.empty()) {
    if (!o.draft.empty()) return InvalidArgument("--draft needs --model (the embedded default brings its own draft)");
    SPECD_ASSIGN_OR_RETURN(DefaultModelDirs d, MaterializeDefaultModel());
    p.model_dir = d.target;
    p.embedded = true;
    // The embedded draft is used unless another drafter is asked for.
    if (o.drafter.empty() || o.drafter == "draft") p.draft_dir = d.draft;
  }
  p.drafter = o.drafter.empty() ? (p.draft_dir.empty() ? "ngram" : "draft") : o.drafter;
  if (p.drafter == "draft" && p.draft_dir.empty()) return InvalidArgument("--drafter draft needs --draft DIR");
  if (p.drafter != "draft" && !o.draft.empty()) {
    return InvalidArgument("--draft given with --drafter {}; drop one of them", p.drafter);
  }
  return p;
}

// A model folder, or `random:NAME[:SEED]`: random weights of a released Qwen3.5 shape
// (model/presets.h), for benchmarks and soak runs at real sizes without a checkpoint.
StatusOr<std::unique_ptr<Qwen35Model>> LoadModel(const std::string& spec, Backend* backend, uint64_t default_seed) {
  constexpr std::string_view kRandom = "random:";
  if (spec.rfind(kRandom, 0) != 0) return Qwen35Model::Load(spec, backend);
  std::string name = spec.substr(kRandom.size());
  uint64_t seed = default_seed;
  if (const size_t colon = name.find(':'); colon != std::string::npos) {
    try {
      seed = std::stoull(name.substr(colon + 1));
    } catch (const std::exception&) {
      return InvalidArgument("{}: the seed after the shape name must be a number", spec);
    }
    name = name.substr(0, colon);
  }
  SPECD_ASSIGN_OR_RETURN(ModelConfig cfg, ReleasedShapes(name));
  try {
    return Qwen35Model::Random(cfg, backend, seed);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("not enough {} memory for random weights of {}", backend->name(), name);
  }
}

// TLS credentials and the API key, read (and checked) before anything else starts.
struct Security {
  std::shared_ptr<grpc::ServerCredentials> credentials;
  std::string api_key;
};

StatusOr<std::string> ReadFileText(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return InvalidArgument("cannot read the {} file {}", what, path);
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return text;
}

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

std::string HostPort(const std::string& host, int port) {
  const bool v6 = host.find(':') != std::string::npos && host.front() != '[';
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

Status WritePortFile(const std::string& path, int port, int metrics_port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    f << nlohmann::json{{"port", port}, {"metrics_port", metrics_port}}.dump() << "\n";
    if (!f) return Internal("cannot write {}", tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);  // atomic: a reader never sees half a file
  if (ec) return Internal("cannot write {}: {}", path, ec.message());
  return Status::Ok();
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

  if (o.k > o.max_k) return InvalidArgument("--k {} exceeds --max-k {}", o.k, o.max_k);
  SPECD_ASSIGN_OR_RETURN(Security security, LoadSecurity(o));
  SPECD_ASSIGN_OR_RETURN(Plan plan, ResolveModels(o));
  if (plan.embedded) {
    spdlog::info("no --model: serving the embedded demo pair from {} (a 4.7M-parameter Qwen3.5 trained on "
                 "Python source and its 0.95M draft: plausible-looking Python, not a real model)",
                 plan.model_dir);
  }
  SPECD_ASSIGN_OR_RETURN(auto backend, MakeBackend(o.device));
  if (o.batch_invariant) backend->SetKernelOption("skinny_wide", true);
  backend->SetGraphPolicy(o.cuda_graph_limit, o.cuda_graph_capture_after);
  if (backend->device() == Device::kCuda) {
    // The bound on graph memory (docs/DESIGN-NOTES.md, CUDA graphs): a fixed number of
    // executables and one workspace sized by the largest captured batch (spans of at most 17
    // tokens, at most --max-batch of them), plus a capped cache of freed blocks.
    spdlog::info("CUDA graphs: at most {} kept (a batch shape is captured when seen {} times), one shared "
                 "workspace for batches of at most {} tokens; /metrics has specd:cuda_graph_* and "
                 "specd:device_pool_cached_bytes",
                 o.cuda_graph_limit, o.cuda_graph_capture_after, int64_t{o.max_batch} * 17);
  }
  SPECD_ASSIGN_OR_RETURN(auto target, LoadModel(plan.model_dir, backend.get(), 1));
  std::unique_ptr<Qwen35Model> draft;
  if (plan.drafter == "draft") {
    SPECD_ASSIGN_OR_RETURN(draft, LoadModel(plan.draft_dir, backend.get(), 2));
  }
  SPECD_ASSIGN_OR_RETURN(auto text, cli::TextCodec::ForModel(plan.model_dir, o.tokenizer));
  const ModelConfig& cfg = target->config();
  int64_t max_ctx = std::min<int64_t>(cfg.max_position_embeddings, 32768);
  if (o.max_context > 0) {
    if (o.max_context > cfg.max_position_embeddings) {
      return InvalidArgument("--max-context {} exceeds the model's max_position_embeddings {}", o.max_context,
                             cfg.max_position_embeddings);
    }
    max_ctx = o.max_context;
  }

  EngineOptions eo;
  eo.max_seqs = o.max_batch;
  eo.max_ctx = max_ctx;
  eo.max_k = o.max_k;
  eo.default_k = plan.drafter == "none" ? 0 : o.k;
  eo.prefill_chunk = o.prefill_chunk;
  eo.max_prefill_tokens = o.max_prefill_tokens;
  eo.kv_cache_tokens = o.kv_cache_tokens;
  const std::string drafter = plan.drafter;
  Qwen35Model* target_ptr = target.get();
  Qwen35Model* draft_ptr = draft.get();
  // Builds a fresh drafter + engine: at startup, and again if a step fails.
  EngineFactory factory = [=]() -> StatusOr<std::unique_ptr<SpecEngine>> {
    std::unique_ptr<Drafter> d;
    if (drafter == "ngram") {
      d = MakeNgramDrafter();
    } else if (drafter == "draft") {
      SPECD_ASSIGN_OR_RETURN(d, MakeDraftModelDrafter(draft_ptr, target_ptr->config().vocab_size, eo.max_seqs,
                                                      eo.max_ctx, eo.max_k));
    }
    return SpecEngine::Create(target_ptr, std::move(d), eo);
  };

  Metrics metrics;
  Scheduler scheduler(factory, text.get(), &metrics, SchedulerOptions{o.max_batch, o.max_queue, drafter, o.debug_fail_step});
  SPECD_RETURN_IF_ERROR(scheduler.Start());
  if (o.debug_fail_alloc > 0) backend->InjectAllocFailures(o.debug_fail_alloc - 1, 1);

  ServeLimits limits{cfg.vocab_size, max_ctx, o.max_k, drafter};
  v1::ModelInfo info;
  info.set_model(plan.embedded ? "embedded-default (models/demo: trained demo pair)" : plan.model_dir);
  info.set_model_type(cfg.model_type);
  info.set_vocab_size(static_cast<uint64_t>(cfg.vocab_size));
  info.set_num_layers(static_cast<uint32_t>(cfg.num_hidden_layers));
  info.set_hidden_size(static_cast<uint32_t>(cfg.hidden_size));
  info.set_drafter(drafter);
  info.set_draft_model(drafter == "draft" ? (plan.embedded ? "embedded-default draft" : plan.draft_dir) : "");
  info.set_default_k(static_cast<uint32_t>(eo.default_k));
  info.set_max_context(static_cast<uint64_t>(max_ctx));
  info.set_device(o.device);
  info.set_max_batch(static_cast<uint32_t>(o.max_batch));
  for (int32_t e : cfg.eos_token_ids) info.add_eos_token_ids(e);
  info.set_version(SPECD_VERSION);
  info.set_has_tokenizer(text->has_tokenizer());
  info.set_max_k(static_cast<uint32_t>(o.max_k));
  info.set_max_queue(static_cast<uint32_t>(o.max_queue));
  SpecdService service(&scheduler, text.get(), &metrics, limits, info, security.api_key);

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
    scheduler.Stop();
    return Status(StatusCode::kUnavailable, fmt::format("cannot listen on {}", HostPort(o.host, o.port)));
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(true);

  MetricsHttpServer http;
  if (o.metrics_port > 0) {
    Status st = http.Start(o.host, o.metrics_port, &metrics);
    if (!st.ok()) {
      server->Shutdown();
      scheduler.Stop();
      return st;
    }
  }
  if (!o.port_file.empty()) SPECD_RETURN_IF_ERROR(WritePortFile(o.port_file, bound_port, o.metrics_port));
  spdlog::info("specd {} serving on {} (model {}, drafter {}, k {}, max-batch {}, max-queue {}, context {}, "
               "device {}, tokenizer {}){}",
               SPECD_VERSION, HostPort(o.host, bound_port), plan.model_dir, drafter, eo.default_k, o.max_batch,
               o.max_queue, max_ctx, o.device, text->has_tokenizer() ? "yes" : "none",
               o.metrics_port > 0 ? fmt::format("; metrics on http://{}/metrics", HostPort(o.host, o.metrics_port))
                                  : std::string());

  int sig = 0;
  while (sig == 0) sig = WaitSignal(sigs, std::chrono::milliseconds(1000));

  // ---- drain: NOT_SERVING, refuse new work, let in-flight requests finish within the grace ----
  spdlog::info("{}: draining (health NOT_SERVING, new requests refused, grace {} s)", strsignal(sig),
               o.grace_seconds);
  health->SetServingStatus(false);
  scheduler.BeginDrain();
  const auto grace_end = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                            std::chrono::duration<double>(o.grace_seconds));
  while (!scheduler.Idle() && Clock::now() < grace_end) {
    if (WaitSignal(sigs, std::chrono::milliseconds(20)) != 0) {
      spdlog::warn("second signal: cancelling in-flight requests now");
      break;
    }
  }
  if (!scheduler.Idle()) {
    spdlog::warn("grace period over: cancelling the requests still in flight");
    scheduler.CancelAll(grpc::Status(grpc::StatusCode::UNAVAILABLE, "server shut down before the request finished"));
    const auto hard_end = Clock::now() + std::chrono::seconds(5);
    while (!scheduler.Idle() && Clock::now() < hard_end) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  scheduler.Stop();
  http.Stop();
  spdlog::info("stopped");
  return Status::Ok();
}

}  // namespace specd::serve
