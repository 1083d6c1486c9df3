#include "server/http/api_server.h"

#include <chrono>
#include <random>

#include <httplib.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "server/http/exchange.h"
#include "server/http/openai_response.h"

namespace specd::serve::http {
namespace {

using Json = nlohmann::ordered_json;
using namespace std::chrono_literals;

int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string NewId(const char* prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{}{:016x}{:016x}", prefix, rng(), rng());
}

void SendError(httplib::Response& res, int status, std::string_view message) {
  res.status = status;
  res.set_content(ErrorBody(status, message), "application/json");
}

// A streaming response's state, shared by httplib's content provider and its releaser.
struct Stream {
  std::shared_ptr<Exchange> ex;
  ResponseWriter writer;
  bool started = false, done = false;
};

}  // namespace

ApiServer::ApiServer(Batcher* batcher, Metrics* metrics, ApiContext ctx)
    : batcher_(batcher), metrics_(metrics), ctx_(std::move(ctx)) {}

ApiServer::~ApiServer() { Stop(); }

bool ApiServer::Authorized(const std::string& authorization) const {
  if (opt_.api_key.empty()) return true;
  const std::string want = "Bearer " + opt_.api_key;
  // Constant time in the key: the comparison does not stop at the first differing byte.
  if (authorization.size() != want.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < want.size(); ++i) diff |= static_cast<unsigned char>(authorization[i] ^ want[i]);
  return diff == 0;
}

void ApiServer::Routes() {
  // Errors httplib produces itself (404 unknown path, 413 body too large, 400 unparsable HTTP)
  // leave the body empty: give them OpenAI's error object.
  http_->set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string msg = res.status == 404   ? fmt::format("no route {} {}", req.method, req.path)
                      : res.status == 413 ? std::string("the request body is too large")
                                          : fmt::format("HTTP error {}", res.status);
    res.set_content(ErrorBody(res.status, msg), "application/json");
  });
  http_->set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    spdlog::error("HTTP handler failed: {}", what);
    SendError(res, 500, what);
  });
  http_->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (req.path.starts_with("/v1/") && !Authorized(req.get_header_value("Authorization"))) {
      spdlog::info("HTTP request rejected: 401 (from {})", req.remote_addr);
      SendError(res, 401, "missing or wrong API key: send the header `Authorization: Bearer <key>`");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  http_->Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (draining_.load()) {
      SendError(res, 503, "draining: the server is shutting down");
    } else {
      res.set_content(R"({"status":"ok"})", "application/json");
    }
  });
  http_->Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    Json m{{"id", ctx_.served_model},
           {"object", "model"},
           {"created", created_},
           {"owned_by", "specd"},
           {"max_model_len", opt_.max_context}};
    res.set_content(Json{{"object", "list"}, {"data", Json::array({m})}}.dump(), "application/json");
  });

  auto generate = [this](Endpoint ep, const httplib::Request& req, httplib::Response& res) {
    auto fail = [&](const Status& st) {
      metrics_->RequestFailed(StatusCodeName(st.code()));
      spdlog::info("HTTP request {} rejected: {} ({})", req.path, HttpStatusOf(st), st.message());
      SendError(res, HttpStatusOf(st), st.message());
    };
    const Json body = Json::parse(req.body, nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded()) return fail(InvalidArgument("the request body is not valid JSON"));
    auto parsed = ParseApiRequest(ep, body, ctx_);
    if (!parsed.ok()) return fail(parsed.status());
    ApiRequest& api = *parsed;
    ResponseWriter::Meta meta{ep, NewId(ep == Endpoint::kChat ? "chatcmpl-" : "cmpl-"),
                              api.model.empty() ? ctx_.served_model : api.model, UnixNow(), api.include_usage};
    api.prepared.request_id = meta.id;
    auto writer = ResponseWriter::Create(meta, api.prepared.chat_output);
    if (!writer.ok()) return fail(writer.status());

    Batcher* batcher = batcher_;
    auto ex = std::make_shared<Exchange>([batcher] { batcher->Wake(); });
    std::unique_ptr<RequestSink> sink = std::make_unique<HttpSink>(ex);
    if (Status st = batcher_->Submit(std::move(api.prepared), sink); !st.ok()) return fail(st);

    if (!api.stream) {
      // One JSON body at the end. The client cannot be watched while nothing is written to it:
      // a client that leaves early is noticed only when the answer is sent (max_tokens bounds it).
      for (;;) {
        Exchange::Taken t = ex->Take(1000ms);
        if (!t.text.empty()) writer->Add(t.text);
        if (!t.ended) continue;
        if (t.failure) {
          SendError(res, HttpStatusOf(*t.failure), t.failure->message());
        } else {
          res.set_content(writer->Body(*t.outcome), "application/json");
        }
        return;
      }
    }
    auto stream = std::make_shared<Stream>(Stream{ex, std::move(*writer)});
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [stream](size_t, httplib::DataSink& sink) {
          std::string out;
          if (!stream->started) {
            stream->started = true;
            out = stream->writer.StreamStart();
          }
          // Bounded wait: httplib checks for shutdown between calls.
          Exchange::Taken t = stream->ex->Take(200ms);
          if (!t.text.empty()) out += stream->writer.StreamText(t.text);
          if (t.ended) {
            out += t.failure ? ResponseWriter::StreamError(*t.failure) : stream->writer.StreamEnd(*t.outcome);
            stream->done = true;
          }
          if (!out.empty() && !sink.write(out.data(), out.size())) {
            stream->ex->ClientGone();  // the write failed: the client is gone; free its slot
            return false;
          }
          if (stream->done) sink.done();
          return true;
        },
        [stream](bool success) {
          if (!success || !stream->done) stream->ex->ClientGone();
        });
  };
  http_->Post("/v1/chat/completions", [generate](const httplib::Request& req, httplib::Response& res) {
    generate(Endpoint::kChat, req, res);
  });
  http_->Post("/v1/completions", [generate](const httplib::Request& req, httplib::Response& res) {
    generate(Endpoint::kCompletion, req, res);
  });
}

Status ApiServer::Start(const ApiServerOptions& opt) {
  opt_ = opt;
  created_ = UnixNow();
  if (!opt.tls_cert.empty()) {
    auto ssl = std::make_unique<httplib::SSLServer>(opt.tls_cert.c_str(), opt.tls_key.c_str());
    if (!ssl->is_valid()) return InvalidArgument("cannot use {} / {} for HTTPS", opt.tls_cert, opt.tls_key);
    http_ = std::move(ssl);
  } else {
    http_ = std::make_unique<httplib::Server>();
  }
  const size_t workers = static_cast<size_t>(std::max(8, opt.workers));
  http_->new_task_queue = [workers] { return new httplib::ThreadPool(workers); };
  http_->set_payload_max_length(opt.max_body_bytes);
  http_->set_read_timeout(30, 0);
  http_->set_write_timeout(30, 0);
  http_->set_keep_alive_timeout(5);
  Routes();
  port_ = opt.port;
  if (opt.port == 0) {
    port_ = http_->bind_to_any_port(opt.host);
    if (port_ <= 0) return Unavailable("cannot listen for HTTP on {}", opt.host);
  } else if (!http_->bind_to_port(opt.host, opt.port)) {
    return Unavailable("cannot listen for HTTP on {}:{}", opt.host, opt.port);
  }
  thread_ = std::thread([this] { http_->listen_after_bind(); });
  return Status::Ok();
}

void ApiServer::Stop() {
  if (!thread_.joinable()) return;
  // httplib's stop() does nothing before the listen loop runs: wait for it to start.
  for (int i = 0; i < 1000 && !http_->is_running(); ++i) std::this_thread::sleep_for(1ms);
  http_->stop();
  thread_.join();
}

}  // namespace specd::serve::http
