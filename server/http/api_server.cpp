#include "server/http/api_server.h"

#include <algorithm>
#include <chrono>
#include <random>

#include <httplib.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "server/api_key.h"
#include "server/http/exchange.h"
#include "server/http/openai_response.h"

namespace specd::serve::http {
namespace {

using Json = nlohmann::ordered_json;
using namespace std::chrono_literals;

int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// 128 bits from the system's random source: the id is also the batcher's request id, which a
// gRPC client could Abort, so it must not be predictable from ids seen before.
std::string NewId(const char* prefix) {
  thread_local std::random_device rd;
  return fmt::format("{}{:08x}{:08x}{:08x}{:08x}", prefix, rd(), rd(), rd(), rd());
}

// Nesting depth of a JSON text (brackets outside strings). nlohmann's parser, dump() and copies
// recurse once per level: a body of 100,000 '[' would overflow a worker's stack.
size_t JsonDepth(std::string_view text) {
  size_t depth = 0, max_depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      max_depth = std::max(max_depth, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return max_depth;
}

constexpr size_t kMaxJsonDepth = 64;

// Calls ClientGone unless dismissed: a request handed to the batcher is cancelled whenever its
// handler leaves without passing it on (an exception included).
class CancelUnlessDismissed {
 public:
  explicit CancelUnlessDismissed(std::shared_ptr<Exchange> ex) : ex_(std::move(ex)) {}
  ~CancelUnlessDismissed() {
    if (ex_) ex_->ClientGone();
  }
  void Dismiss() { ex_.reset(); }

 private:
  std::shared_ptr<Exchange> ex_;
};

void SendError(httplib::Response& res, int status, std::string_view message) {
  res.status = status;
  res.set_content(ErrorBody(status, message), "application/json");
}

// A response's state once the handler has returned, shared by httplib's content provider and
// its releaser (both run on the connection's worker thread).
struct Stream {
  std::shared_ptr<Exchange> ex;
  ResponseWriter writer;
  bool sse = true;  // server-sent events; else one JSON body at the end
  bool started = false, done = false;
  std::chrono::steady_clock::time_point last_write = std::chrono::steady_clock::now();
};

// One call of the content provider: whatever the batcher left, formatted and written. false ends
// the response (the client is gone, or the end was written).
bool Pump(Stream& st, httplib::DataSink& sink) {
  std::string out;
  if (st.sse && !st.started) out = st.writer.StreamStart();
  st.started = true;
  // Bounded wait: httplib checks for shutdown between calls.
  Exchange::Taken t = st.ex->Take(200ms);
  if (!t.text.empty()) {
    if (st.sse) {
      out += st.writer.StreamText(t.text);
    } else {
      st.writer.Add(t.text);
    }
  }
  if (t.ended) {
    if (st.sse) {
      out += t.failure ? ResponseWriter::StreamError(*t.failure) : st.writer.StreamEnd(*t.outcome);
    } else {
      // The status line went out with 200 when the first token arrived: a later failure can only
      // be an error object in the body.
      out += t.failure ? ErrorBody(HttpStatusOf(*t.failure), t.failure->message()) : st.writer.Body(*t.outcome);
    }
    st.done = true;
  }
  const auto now = std::chrono::steady_clock::now();
  if (out.empty()) {
    // Nothing to send (queued, a long prefill, text held back by the parser or a stop string):
    // look at the socket, so that a client that left is noticed now, not at the next write.
    if (!sink.is_writable()) return false;
    // An SSE comment now and then keeps proxies from dropping a quiet stream (clients skip it).
    if (st.sse && now - st.last_write > 5s) out = ": keep-alive\n\n";
  }
  if (!out.empty()) {
    if (!sink.write(out.data(), out.size())) return false;
    st.last_write = now;
  }
  if (st.done) sink.done();
  return true;
}

}  // namespace

ApiServer::ApiServer(Batcher* batcher, Metrics* metrics, ApiContext ctx)
    : batcher_(batcher), metrics_(metrics), ctx_(std::move(ctx)) {}

ApiServer::~ApiServer() { Stop(); }

bool ApiServer::Authorized(const std::string& authorization) const {
  return BearerMatches(authorization, opt_.api_key);
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
    int status = 500;
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const nlohmann::json::exception& e) {
      status = 400;  // a JSON value of a type the parser did not check for
      what = fmt::format("malformed request: {}", e.what());
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    if (status == 500) spdlog::error("HTTP handler failed: {}", what);
    SendError(res, status, what);
  });
  // Runs before httplib reads a body. httplib bounds a body by --max-message-bytes only when it
  // has a Content-Length: a chunked or compressed one would be read (and inflated) without limit.
  // The API key of a POST is checked after its body is read (in the handler): answering before
  // would leave the body on the connection, to be read as the next request.
  http_->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (req.method == "POST") {
      if (req.has_header("Transfer-Encoding") || !req.has_header("Content-Length")) {
        SendError(res, 411, "send the body with a Content-Length (no chunked transfer encoding)");
        return httplib::Server::HandlerResponse::Handled;
      }
      if (req.has_header("Content-Encoding") && req.get_header_value("Content-Encoding") != "identity") {
        SendError(res, 415, "compressed request bodies are not accepted");
        return httplib::Server::HandlerResponse::Handled;
      }
    } else if (req.path.starts_with("/v1/") && !Authorized(req.get_header_value("Authorization"))) {
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
  auto model_json = [this] {
    return Json{{"id", ctx_.served_model},
                {"object", "model"},
                {"created", created_},
                {"owned_by", "specd"},
                {"max_model_len", opt_.max_context}};
  };
  http_->Get("/v1/models", [model_json](const httplib::Request&, httplib::Response& res) {
    res.set_content(Json{{"object", "list"}, {"data", Json::array({model_json()})}}.dump(), "application/json");
  });
  http_->Get(R"(/v1/models/(.+))", [this, model_json](const httplib::Request& req, httplib::Response& res) {
    if (req.matches[1] != ctx_.served_model) {
      return SendError(res, 404, fmt::format("the model '{}' does not exist", req.matches[1].str()));
    }
    res.set_content(model_json().dump(), "application/json");
  });

  auto generate = [this](Endpoint ep, const httplib::Request& req, httplib::Response& res) {
    auto fail = [&](const Status& st) {
      metrics_->RequestFailed(StatusCodeName(st.code()));
      spdlog::info("HTTP request {} rejected: {} ({})", req.path, HttpStatusOf(st), st.message());
      SendError(res, HttpStatusOf(st), st.message());
    };
    if (!Authorized(req.get_header_value("Authorization"))) {
      spdlog::info("HTTP request rejected: 401 (from {})", req.remote_addr);
      return SendError(res, 401, "missing or wrong API key: send the header `Authorization: Bearer <key>`");
    }
    if (JsonDepth(req.body) > kMaxJsonDepth) {
      return fail(InvalidArgument("the request body nests deeper than {} levels", kMaxJsonDepth));
    }
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
    CancelUnlessDismissed guard(ex);

    auto stream = std::make_shared<Stream>(Stream{ex, std::move(*writer), api.stream});
    if (!api.stream) {
      // One JSON body. Until the first token the handler waits here, so that a request refused
      // or failed before then (drain, memory) gets its own HTTP status. Then the status line
      // goes out (200) and the provider waits, looking at the socket between steps: a client
      // that leaves is noticed and its request cancelled, as for a stream.
      for (;;) {
        Exchange::Taken t = ex->Take(1000ms);
        if (!t.text.empty()) stream->writer.Add(t.text);
        if (t.ended) {
          guard.Dismiss();
          if (t.failure) return SendError(res, HttpStatusOf(*t.failure), t.failure->message());
          return res.set_content(stream->writer.Body(*t.outcome), "application/json");
        }
        if (!t.text.empty() || t.tokens > 0) break;
      }
    }
    res.set_header("Cache-Control", "no-cache");
    guard.Dismiss();  // from here the releaser cancels
    std::atomic<int>* live = &live_;
    live->fetch_add(1);
    res.set_chunked_content_provider(
        api.stream ? "text/event-stream" : "application/json",
        [stream](size_t, httplib::DataSink& sink) {
          // httplib does not catch here: an exception would end the process.
          try {
            if (Pump(*stream, sink)) return true;
          } catch (const std::exception& e) {
            spdlog::error("HTTP response failed: {}", e.what());
          }
          stream->ex->ClientGone();  // the client is gone (or the write failed): free its slot
          return false;
        },
        [stream, live](bool success) {
          if (!success || !stream->done) stream->ex->ClientGone();
          live->fetch_sub(1);
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
    SSL_CTX_set_min_proto_version(ssl->ssl_context(), TLS1_2_VERSION);
    http_ = std::move(ssl);
  } else {
    http_ = std::make_unique<httplib::Server>();
  }
  // Every connection holds a worker while it is served (a stream for its whole life); more wait
  // in httplib's queue. Capped: the pool's threads are created up front.
  const size_t workers = static_cast<size_t>(std::clamp(opt.workers, 8, kMaxWorkers));
  http_->new_task_queue = [workers] { return new httplib::ThreadPool(workers); };
  http_->set_payload_max_length(opt.max_body_bytes);
  // Short socket timeouts: a client that trickles its request (or idles on keep-alive) gives
  // its worker back within seconds. Put a proxy in front for hostile networks (docs/server.md).
  http_->set_read_timeout(5, 0);
  http_->set_write_timeout(30, 0);
  http_->set_keep_alive_timeout(5);
  http_->set_tcp_nodelay(true);  // small SSE events go out at once
  // httplib sets SO_REUSEPORT: a second daemon on the same port would take half the
  // connections. SO_REUSEADDR only, as for gRPC.
  http_->set_socket_options([](socket_t sock) {
    int one = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  });
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
