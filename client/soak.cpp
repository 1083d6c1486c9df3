// `specd-client soak`: the daemon under thousands of varied requests, round after round, to show
// that it survives real traffic: no unexpected errors, no lost streams, load gauges back to 0
// after every round, memory flat between the last two rounds, and a greedy control request that
// gives the same ids before and after. Exit 0 only when all of these hold.
//
// Every round runs the SAME mix: its requests split over all the concurrency levels, one phase per
// level (lowest first). Rounds are therefore alike, and the memory read after one is comparable
// with the memory read after the next; a round that ran only at concurrency 64 would hold more
// than one that ran at 1 and hide or fake a leak. The first round is the warm-up (caches, CUDA
// graphs, allocator arenas), which is why only the last two rounds are compared.
//
// Each request is drawn from one seeded RNG on the main thread before its phase starts, so a run
// is reproducible (the same requests in the same order) whatever the thread timing. Each in-flight
// request has its own thread, as in `bench`: C blocking streams are the simplest correct way to
// keep C requests in flight.
#include <netdb.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "client/commands.h"
#include "client/common.h"
#include "specd/v1/specd.grpc.pb.h"

namespace specd::client {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// "1,8,16" -> {1, 8, 16}; false on anything else (empty, junk, negative).
bool ParseList(const std::string& s, std::vector<int64_t>* out) {
  std::string err;
  auto ids = ParseIdList(s, &err);
  if (!ids) return false;
  out->assign(ids->begin(), ids->end());
  return true;
}

std::vector<std::string> SplitNames(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string w; std::getline(ss, w, ',');) {
    w.erase(0, w.find_first_not_of(' '));
    w.erase(w.find_last_not_of(' ') + 1);
    if (!w.empty()) out.push_back(w);
  }
  return out;
}

// ---- /metrics: one blocking HTTP/1.1 GET over a POSIX socket ----------------------------------
// The client links no HTTP library (it goes into the GPU bundle as is); the metrics server sends
// a Content-Length body, and a chunked one is decoded too in case that ever changes.
bool HttpGet(const std::string& hostport, const std::string& path, std::string* body, std::string* err) {
  const size_t colon = hostport.rfind(':');
  if (colon == std::string::npos) {
    *err = "metrics address must be HOST:PORT (got '" + hostport + "')";
    return false;
  }
  std::string host = hostport.substr(0, colon);
  const std::string port = hostport.substr(colon + 1);
  if (host.size() > 1 && host.front() == '[') host = host.substr(1, host.size() - 2);  // [::1]
  addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  if (const int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    *err = "cannot resolve " + hostport + ": " + gai_strerror(rc);
    return false;
  }
  int fd = -1;
  for (addrinfo* a = res; a; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    timeval tv{10, 0};  // a hung metrics thread must not hang the soak
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) {
    *err = "cannot connect to " + hostport;
    return false;
  }
  const std::string req = "GET " + path + " HTTP/1.1\r\nHost: " + hostport + "\r\nConnection: close\r\n\r\n";
  bool ok = send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size());
  std::string resp;
  char buf[65536];
  for (ssize_t n; ok && (n = recv(fd, buf, sizeof buf, 0)) != 0;) {
    if (n < 0) ok = false;
    else resp.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  const size_t hdr_end = resp.find("\r\n\r\n");
  if (!ok || hdr_end == std::string::npos) {
    *err = "no complete HTTP response from " + hostport;
    return false;
  }
  std::string head = resp.substr(0, hdr_end);
  if (head.compare(0, 5, "HTTP/") != 0 || head.find(" 200") == std::string::npos ||
      head.find(" 200") > head.find("\r\n")) {
    *err = "GET " + path + ": " + head.substr(0, head.find("\r\n"));
    return false;
  }
  *body = resp.substr(hdr_end + 4);
  std::transform(head.begin(), head.end(), head.begin(), [](unsigned char c) { return std::tolower(c); });
  if (head.find("transfer-encoding: chunked") != std::string::npos) {
    std::string out;
    size_t p = 0;
    for (;;) {
      const size_t eol = body->find("\r\n", p);
      if (eol == std::string::npos) break;
      const size_t n = std::strtoul(body->c_str() + p, nullptr, 16);
      if (n == 0) break;
      out.append(*body, eol + 2, n);
      p = eol + 2 + n + 2;
    }
    *body = std::move(out);
  }
  return true;
}

// Prometheus text -> {"name{labels}": value}. Comments and malformed lines are skipped.
std::map<std::string, double> ParseMetrics(const std::string& text) {
  std::map<std::string, double> m;
  std::stringstream ss(text);
  for (std::string line; std::getline(ss, line);) {
    if (line.empty() || line[0] == '#') continue;
    const size_t brace = line.find('{');
    const size_t key_end = brace != std::string::npos && brace < line.find(' ') ? line.find('}') + 1 : line.find(' ');
    if (key_end == std::string::npos || key_end == 0 || key_end >= line.size()) continue;
    char* end = nullptr;
    const double v = std::strtod(line.c_str() + key_end, &end);
    if (end != line.c_str() + key_end) m[line.substr(0, key_end)] = v;
  }
  return m;
}

std::optional<double> Get(const std::map<std::string, double>& m, const char* name) {
  auto it = m.find(name);
  return it == m.end() ? std::nullopt : std::optional<double>(it->second);
}

// VmRSS of another process (the fallback for a server without the RSS gauge).
std::optional<double> ProcRss(int64_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(f, line);) {
    if (line.compare(0, 6, "VmRSS:") == 0) return std::strtod(line.c_str() + 6, nullptr) * 1024.0;
  }
  return std::nullopt;
}

// ---- requests ----------------------------------------------------------------------------------

enum class Kind { kPlain, kCancelAfterDelay, kCancelAfterFirstChunk, kDeadline };

const char* KindName(Kind k) {
  switch (k) {
    case Kind::kPlain: return "plain";
    case Kind::kCancelAfterDelay: return "cancel-delay";
    case Kind::kCancelAfterFirstChunk: return "cancel-first-chunk";
    case Kind::kDeadline: return "deadline";
  }
  return "?";
}

struct Planned {
  v1::GenerateRequest req;
  Kind kind = Kind::kPlain;
  int delay_ms = 0;  // cancel delay, or the deadline
};

// What one request came to. `outcome` is "ok", "cancelled", "deadline" (the expected ends),
// "lost", or "unexpected" (then `code` says which, BAD_RESPONSE for an inconsistent OK stream).
struct Result {
  std::string outcome, code, detail;
  int64_t tokens = 0;
};

struct Server {
  int64_t vocab = 0, max_context = 0, max_k = 0, max_batch = 0, max_queue = 0, default_k = 0;
  std::string drafter, device, model;
  std::vector<std::string> drafters;  // all a request may name (ModelInfo.drafters)
};

Result RunOne(v1::Specd::Stub& stub, const Planned& p, int64_t timeout_s) {
  Result r;
  grpc::ClientContext ctx;
  const auto now = std::chrono::system_clock::now();
  ctx.set_deadline(p.kind == Kind::kDeadline ? now + std::chrono::milliseconds(p.delay_ms)
                                             : now + std::chrono::seconds(timeout_s));
  // A timed cancel needs a second thread (the reader blocks). It wakes early when the stream
  // ends first, and is joined before `ctx` goes away.
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::thread canceller;
  if (p.kind == Kind::kCancelAfterDelay) {
    canceller = std::thread([&] {
      std::unique_lock lk(mu);
      if (!cv.wait_for(lk, std::chrono::milliseconds(p.delay_ms), [&] { return done; })) ctx.TryCancel();
    });
  }
  bool final_seen = false;
  v1::GenerateResponse msg, last;
  auto reader = stub.Generate(&ctx, p.req);
  bool cancelled = false;
  while (reader->Read(&msg)) {
    r.tokens += msg.token_ids_size();
    if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      final_seen = true;
      last = msg;
    }
    if (p.kind == Kind::kCancelAfterFirstChunk && r.tokens > 0 && !cancelled) {
      ctx.TryCancel();  // mid-stream: the server sees it between steps
      cancelled = true;
    }
  }
  const grpc::Status st = reader->Finish();
  if (canceller.joinable()) {
    {
      std::lock_guard lk(mu);
      done = true;
    }
    cv.notify_one();
    canceller.join();
  }
  r.code = GrpcCodeName(st.error_code());
  if (st.ok()) {
    if (!final_seen) {
      r.outcome = "lost";
      r.detail = "stream ended OK without a final message";
      return r;
    }
    // An OK stream must also add up: what arrived is what the final message counts, never more
    // than max_tokens, exactly max_tokens when it ended for length, and never ABORT (no one aborts).
    const auto& s = p.req.sampling();
    const int64_t max_tokens = s.has_max_tokens() ? s.max_tokens() : 16;
    std::string bad;
    if (last.usage().completion_tokens() != r.tokens) {
      bad = "usage.completion_tokens " + std::to_string(last.usage().completion_tokens()) + " != " +
            std::to_string(r.tokens) + " received";
    } else if (last.usage().prompt_tokens() != static_cast<uint32_t>(p.req.token_ids().ids_size())) {
      bad = "usage.prompt_tokens " + std::to_string(last.usage().prompt_tokens()) + " != prompt length " +
            std::to_string(p.req.token_ids().ids_size());
    } else if (r.tokens > max_tokens ||
               (last.finish_reason() == v1::FINISH_REASON_LENGTH && r.tokens != max_tokens)) {
      bad = std::to_string(r.tokens) + " tokens with max_tokens " + std::to_string(max_tokens) + " and finish " +
            FinishReasonName(last.finish_reason());
    } else if (last.finish_reason() == v1::FINISH_REASON_ABORT) {
      bad = "finish_reason ABORT, and nothing was aborted";
    }
    if (!bad.empty()) {
      r.outcome = "unexpected";
      r.code = "BAD_RESPONSE";
      r.detail = bad;
    } else {
      r.outcome = "ok";
    }
    return r;
  }
  r.detail = st.error_message();
  const auto c = st.error_code();
  if (c == grpc::StatusCode::CANCELLED &&
      (p.kind == Kind::kCancelAfterDelay || p.kind == Kind::kCancelAfterFirstChunk)) {
    r.outcome = "cancelled";
  } else if (c == grpc::StatusCode::DEADLINE_EXCEEDED && p.kind == Kind::kDeadline) {
    r.outcome = "deadline";
  } else if (c == grpc::StatusCode::DEADLINE_EXCEEDED) {
    r.outcome = "lost";  // the generous overall timeout: the request never came back
    r.detail = "no answer within " + std::to_string(timeout_s) + " s";
  } else {
    r.outcome = "unexpected";
  }
  return r;
}

// Draws one request. The prompt is random ids in [3, vocab) (0..2 are the special ids of the
// demo tokenizer; any id below vocab is valid for the server), shortened when prompt +
// max_tokens + k + 1 would not fit the context (the KV rows a request reserves).
Planned Draw(std::mt19937_64& rng, const SoakArgs& a, const Server& srv, const std::vector<std::string>& drafters,
             int64_t mt_lo, int64_t mt_hi, int64_t k_lo, int64_t k_hi, const std::string& id) {
  auto uni = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };
  Planned p;
  v1::GenerateRequest& r = p.req;
  r.set_request_id(id);
  int64_t max_tokens = uni(mt_lo, mt_hi);
  const int64_t k = std::min(uni(k_lo, k_hi), srv.max_context - 3);
  int64_t len = uni(a.min_prompt_tokens, a.max_prompt_tokens);
  const int64_t room = srv.max_context - k - 1;
  if (max_tokens > room - 1) max_tokens = std::max<int64_t>(1, room - 1);
  if (len + max_tokens > room) len = std::max<int64_t>(1, room - max_tokens);
  if (a.shared_prefix_fraction > 0 && chance(a.shared_prefix_fraction)) {
    // One of four fixed "system prompts" first (the same ids for the whole soak), so that the
    // prefix cache has something to find while requests run, end, cancel and time out.
    const int64_t j = uni(0, 3);
    std::mt19937_64 g(a.seed * 7919 + static_cast<uint64_t>(j));
    const int64_t n = std::min<int64_t>(a.shared_prefix_tokens, len);
    for (int64_t i = 0; i < n; ++i) {
      r.mutable_token_ids()->add_ids(static_cast<int32_t>(std::uniform_int_distribution<int64_t>(3, srv.vocab - 1)(g)));
    }
  }
  for (int64_t i = r.token_ids().ids_size(); i < len; ++i) {
    r.mutable_token_ids()->add_ids(static_cast<int32_t>(uni(3, srv.vocab - 1)));
  }

  v1::SamplingParams* s = r.mutable_sampling();
  s->set_max_tokens(static_cast<uint32_t>(max_tokens));
  if (chance(0.4)) {
    s->set_temperature(0);
  } else {
    s->set_temperature(0.8f);
    s->set_seed(static_cast<uint64_t>(uni(0, 1 << 30)));
    s->set_mode(chance(0.5) ? v1::SamplingParams::MODE_REJECTION : v1::SamplingParams::MODE_COUPLED);
    if (chance(0.3)) s->set_top_p(0.9f);
    if (chance(0.3)) s->set_top_k(50);
  }
  if (chance(0.5)) s->set_ignore_eos(true);

  v1::SpeculationParams* sp = r.mutable_speculation();
  const size_t d = static_cast<size_t>(uni(0, static_cast<int64_t>(drafters.size())));  // == size: unset
  if (d < drafters.size()) sp->set_drafter(drafters[d]);
  sp->set_k(static_cast<uint32_t>(k));
  if (chance(0.1)) sp->set_adaptive_k(true);

  const double x = std::uniform_real_distribution<double>(0, 1)(rng);
  if (x < a.cancel_fraction) {
    if (chance(0.5)) {
      p.kind = Kind::kCancelAfterDelay;
      p.delay_ms = static_cast<int>(uni(1, 100));
    } else {
      p.kind = Kind::kCancelAfterFirstChunk;
    }
  } else if (x < a.cancel_fraction + a.deadline_fraction) {
    p.kind = Kind::kDeadline;
    p.delay_ms = static_cast<int>(uni(5, 200));
  }
  return p;
}

// The greedy control request: alone on the server, at temperature 0 with the server's default
// drafter and k, so it must give the same ids at the start and at the end of the soak.
std::optional<std::vector<int32_t>> RunControl(v1::Specd::Stub& stub, const std::vector<int32_t>& prompt,
                                               int64_t timeout_s, std::string* err) {
  v1::GenerateRequest req;
  req.mutable_token_ids()->mutable_ids()->Add(prompt.begin(), prompt.end());
  req.mutable_sampling()->set_max_tokens(64);
  req.mutable_sampling()->set_temperature(0);
  req.mutable_sampling()->set_ignore_eos(true);  // always 64 ids: a longer comparison
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(timeout_s));
  std::vector<int32_t> ids;
  bool final_seen = false;
  v1::GenerateResponse msg;
  auto reader = stub.Generate(&ctx, req);
  while (reader->Read(&msg)) {
    ids.insert(ids.end(), msg.token_ids().begin(), msg.token_ids().end());
    final_seen |= msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED;
  }
  const grpc::Status st = reader->Finish();
  if (!st.ok() || !final_seen) {
    *err = st.ok() ? "no final message" : std::string(GrpcCodeName(st.error_code())) + ": " + st.error_message();
    return std::nullopt;
  }
  return ids;
}

std::string Join(const std::vector<int32_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

std::string Mib(const std::optional<double>& b) {
  if (!b) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", *b / (1024.0 * 1024.0));
  return buf;
}

std::string Num(const std::optional<double>& v) { return v ? std::to_string(static_cast<int64_t>(*v)) : "n/a"; }

// One round's figures, as printed and as written to the JSON.
struct Round {
  int index = 0, requests = 0;
  double wall_s = 0;
  int64_t tokens = 0;
  std::map<std::string, int> outcomes, codes, unexpected;  // codes: every non-OK status, expected or not
  std::vector<std::string> samples;                          // the first few unexpected/lost, for the log
  bool scraped = false, load_zero = false;
  std::optional<double> running, waiting, device, rss, graphs, graph_bytes;
  // The device memory the daemon's allocations hold: whole-device use less the freed blocks its
  // allocator keeps for reuse (capped, and refilled at random by the traffic: up to 2 GiB of
  // round-to-round noise in `device`, which would hide a leak of a few MiB or fake one).
  std::optional<double> device_live;
  std::string rss_source, graph_bytes_name;
};

std::string CodesString(const std::map<std::string, int>& m) {
  std::string s;
  for (const auto& [k, v] : m) s += (s.empty() ? "" : ",") + k + "=" + std::to_string(v);
  return s.empty() ? "-" : s;
}

const char* kHeader =
    "round requests concurrency     wall_s   tok/s     ok  lost unexpected  load(run/wait) device_MiB   live_MiB  "
    "rss_MiB  graphs graph_MiB  codes\n";

void PrintRound(const Round& r, const std::string& levels) {
  int unexpected = 0;
  for (const auto& [k, v] : r.unexpected) unexpected += v;
  const std::string load = r.scraped ? Num(r.running) + "/" + Num(r.waiting) : "n/a";
  std::printf("%5d %8d %-14s %7.1f %7.0f %6d %5d %10d  %14s %10s %10s %8s %7s %9s  %s\n", r.index, r.requests,
              levels.c_str(), r.wall_s, r.wall_s > 0 ? static_cast<double>(r.tokens) / r.wall_s : 0.0,
              r.outcomes.count("ok") ? r.outcomes.at("ok") : 0, r.outcomes.count("lost") ? r.outcomes.at("lost") : 0,
              unexpected, load.c_str(), Mib(r.device).c_str(), Mib(r.device_live).c_str(), Mib(r.rss).c_str(),
              Num(r.graphs).c_str(),
              Mib(r.graph_bytes).c_str(), CodesString(r.codes).c_str());
  std::fflush(stdout);
}

json RoundJson(const Round& r) {
  auto opt = [](const std::optional<double>& v) { return v ? json(*v) : json(nullptr); };
  return {{"round", r.index},
          {"requests", r.requests},
          {"wall_s", r.wall_s},
          {"tokens", r.tokens},
          {"tokens_per_s", r.wall_s > 0 ? static_cast<double>(r.tokens) / r.wall_s : 0.0},
          {"outcomes", r.outcomes},
          {"codes", r.codes},
          {"unexpected", r.unexpected},
          {"samples", r.samples},
          {"metrics_scraped", r.scraped},
          {"num_requests_running", opt(r.running)},
          {"num_requests_waiting", opt(r.waiting)},
          {"device_memory_used_bytes", opt(r.device)},
          {"device_memory_live_bytes", opt(r.device_live)},
          {"resident_memory_bytes", opt(r.rss)},
          {"resident_memory_source", r.rss_source},
          {"cuda_graphs", opt(r.graphs)},
          {"cuda_graph_bytes", opt(r.graph_bytes)},
          {"cuda_graph_bytes_metric", r.graph_bytes_name}};
}

}  // namespace

int RunSoak(const SoakArgs& a) {
  std::vector<int64_t> levels, mt, kr;
  if (!ParseList(a.concurrency_levels, &levels) || !ParseList(a.max_tokens_range, &mt) || mt.size() != 2 ||
      !ParseList(a.k_range, &kr) || kr.size() != 2 || mt[0] < 1 || mt[0] > mt[1] || kr[0] > kr[1] ||
      a.rounds < 1 || a.requests_per_round < 1 || a.min_prompt_tokens < 1 ||
      a.min_prompt_tokens > a.max_prompt_tokens || a.cancel_fraction < 0 || a.deadline_fraction < 0 ||
      a.cancel_fraction + a.deadline_fraction > 1 || a.request_timeout_s < 1) {
    std::fprintf(stderr,
                 "soak: bad arguments (--concurrency-levels \"1,8,16,64\", --max-tokens-range \"LO,HI\" with LO >= 1, "
                 "--k-range \"LO,HI\", rounds/requests >= 1, 1 <= min <= max prompt tokens, fractions summing to <= 1)\n");
    return 2;
  }
  for (int64_t c : levels) {
    if (c < 1) {
      std::fprintf(stderr, "soak: concurrency levels must be >= 1\n");
      return 2;
    }
  }
  std::sort(levels.begin(), levels.end());
  std::string levels_str;
  for (int64_t c : levels) levels_str += (levels_str.empty() ? "" : ",") + std::to_string(c);

  auto stub = v1::Specd::NewStub(MakeChannel(a.address));
  Server srv;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::ModelInfo info;
    const grpc::Status st = stub->GetModelInfo(&ctx, {}, &info);
    if (!st.ok()) {
      PrintStatus(st);
      return 2;
    }
    srv = {static_cast<int64_t>(info.vocab_size()), static_cast<int64_t>(info.max_context()), info.max_k(),
           info.max_batch(), info.max_queue(), info.default_k(), info.drafter(), info.device(), info.model(),
           {info.drafters().begin(), info.drafters().end()}};
    if (srv.drafters.empty() && srv.drafter != "none") srv.drafters.push_back(srv.drafter);  // an older server
  }
  if (srv.vocab <= 3 || srv.max_context < 4) {
    std::fprintf(stderr, "soak: the server's vocabulary (%lld) or context (%lld) is too small\n",
                 static_cast<long long>(srv.vocab), static_cast<long long>(srv.max_context));
    return 2;
  }
  // A request may name one of the server's drafters or "none" (server/validate.cpp); the others
  // would be INVALID_ARGUMENT, which the soak would count as unexpected.
  std::vector<std::string> drafters;
  for (const std::string& d : SplitNames(a.drafters)) {
    if (d == "none" || std::find(srv.drafters.begin(), srv.drafters.end(), d) != srv.drafters.end()) {
      drafters.push_back(d);
    } else {
      std::fprintf(stderr, "soak: not sending drafter '%s' (the server serves '%s')\n", d.c_str(),
                   srv.drafter.c_str());
    }
  }
  const int64_t k_lo = std::min<int64_t>(kr[0], srv.max_k), k_hi = std::min<int64_t>(kr[1], srv.max_k);
  if (levels.back() > srv.max_batch + srv.max_queue) {
    std::fprintf(stderr, "soak: warning: concurrency %lld > the server's max_batch + max_queue (%lld): expect RESOURCE_EXHAUSTED\n",
                 static_cast<long long>(levels.back()), static_cast<long long>(srv.max_batch + srv.max_queue));
  }
  const double rss_limit = a.no_rss_check ? std::numeric_limits<double>::infinity()
                          : std::isnan(a.rss_growth_pct) ? a.memory_growth_pct
                                                         : a.rss_growth_pct;
  std::printf("soak: %s, model %s, device %s, drafter %s (k %lld, max_k %lld), vocab %lld, context %lld, max_batch %lld\n",
              a.address.c_str(), srv.model.c_str(), srv.device.c_str(), srv.drafter.c_str(),
              static_cast<long long>(srv.default_k), static_cast<long long>(srv.max_k), static_cast<long long>(srv.vocab),
              static_cast<long long>(srv.max_context), static_cast<long long>(srv.max_batch));
  std::printf("soak: %d rounds x %d requests, concurrency %s per round, seed %llu, prompt %d..%d tokens, "
              "max_tokens %lld..%lld, k %lld..%lld, drafters [%s + server default], cancel %.3f, deadline %.3f\n",
              a.rounds, a.requests_per_round, levels_str.c_str(), static_cast<unsigned long long>(a.seed),
              a.min_prompt_tokens, a.max_prompt_tokens, static_cast<long long>(mt[0]), static_cast<long long>(mt[1]),
              static_cast<long long>(k_lo), static_cast<long long>(k_hi),
              [&] {
                std::string s;
                for (const auto& d : drafters) s += (s.empty() ? "" : ",") + d;
                return s;
              }()
                  .c_str(),
              a.cancel_fraction, a.deadline_fraction);

  // ---- control before ----
  std::mt19937_64 control_rng(a.seed ^ 0x9e3779b97f4a7c15ULL);
  std::vector<int32_t> control_prompt;
  for (int i = 0; i < 32; ++i) {
    control_prompt.push_back(static_cast<int32_t>(std::uniform_int_distribution<int64_t>(3, srv.vocab - 1)(control_rng)));
  }
  std::string err;
  const auto control_before = RunControl(*stub, control_prompt, a.request_timeout_s, &err);
  if (!control_before) std::printf("control (before): FAILED: %s\n", err.c_str());
  else std::printf("control (before): %s\n", Join(*control_before).c_str());
  std::fflush(stdout);

  // ---- rounds ----
  std::mt19937_64 rng(a.seed);
  std::vector<Round> rounds;
  std::fputs(kHeader, stdout);
  for (int ri = 1; ri <= a.rounds; ++ri) {
    Round round;
    round.index = ri;
    round.requests = a.requests_per_round;
    std::vector<Planned> plan;
    for (int i = 0; i < a.requests_per_round; ++i) {
      plan.push_back(Draw(rng, a, srv, drafters, mt[0], mt[1], k_lo, k_hi,
                          "soak-" + std::to_string(ri) + "-" + std::to_string(i)));
    }
    std::vector<Result> results(plan.size());
    const auto t0 = Clock::now();
    // The round's requests split evenly over the levels (the remainder to the first ones).
    size_t begin = 0;
    for (size_t li = 0; li < levels.size(); ++li) {
      const size_t n = plan.size() / levels.size() + (li < plan.size() % levels.size() ? 1 : 0);
      const size_t end = begin + n;
      std::atomic<size_t> next{begin};
      const auto tp = Clock::now();
      std::vector<std::thread> workers;
      for (int64_t w = 0; w < std::min<int64_t>(levels[li], static_cast<int64_t>(n)); ++w) {
        workers.emplace_back([&] {
          for (size_t i; (i = next.fetch_add(1)) < end;) results[i] = RunOne(*stub, plan[i], a.request_timeout_s);
        });
      }
      for (auto& t : workers) t.join();
      std::fprintf(stderr, "round %d: %zu requests at concurrency %lld in %.1f s\n", ri, n,
                   static_cast<long long>(levels[li]), Seconds(Clock::now() - tp));
      begin = end;
    }
    round.wall_s = Seconds(Clock::now() - t0);
    for (size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      round.tokens += r.tokens;
      ++round.outcomes[r.outcome];
      if (r.code != "OK") ++round.codes[r.code];
      if (r.outcome == "unexpected") ++round.unexpected[r.code];
      if ((r.outcome == "unexpected" || r.outcome == "lost") && round.samples.size() < 5) {
        round.samples.push_back(plan[i].req.request_id() + " (" + KindName(plan[i].kind) + "): " + r.outcome + " " +
                                r.code + ": " + r.detail);
      }
    }
    // Load gauges: the scheduler publishes them between steps, so right after the last stream
    // ends they may lag by a step. Poll until both are 0 (up to --settle-s); then read memory once
    // more, after the server has published its idle figures.
    if (!a.metrics_address.empty()) {
      const auto deadline = Clock::now() + std::chrono::duration<double>(a.settle_s);
      std::map<std::string, double> m;
      for (;;) {
        std::string body;
        if (HttpGet(a.metrics_address, "/metrics", &body, &err)) {
          m = ParseMetrics(body);
          round.scraped = true;
          round.running = Get(m, "specd:num_requests_running");
          round.waiting = Get(m, "specd:num_requests_waiting");
          round.load_zero = round.running && round.waiting && *round.running == 0 && *round.waiting == 0;
        } else {
          round.scraped = false;
        }
        if (round.load_zero || Clock::now() > deadline) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      if (round.load_zero) {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        std::string body;
        if (HttpGet(a.metrics_address, "/metrics", &body, &err)) m = ParseMetrics(body);
      }
      if (!round.scraped) std::fprintf(stderr, "round %d: metrics: %s\n", ri, err.c_str());
      round.device = Get(m, "specd:device_memory_used_bytes");
      if (round.device) round.device_live = *round.device - Get(m, "specd:device_pool_cached_bytes").value_or(0.0);
      round.rss = Get(m, "specd:process_resident_memory_bytes");
      if (round.rss) round.rss_source = "metrics";
      round.graphs = Get(m, "specd:cuda_graphs");
      for (const char* name : {"specd:cuda_graph_pool_bytes", "specd:cuda_graph_workspace_bytes"}) {
        if ((round.graph_bytes = Get(m, name))) {
          round.graph_bytes_name = name;
          break;
        }
      }
    }
    if (!round.rss && a.server_pid > 0) {
      round.rss = ProcRss(a.server_pid);
      if (round.rss) round.rss_source = "/proc/" + std::to_string(a.server_pid) + "/status";
    }
    PrintRound(round, levels_str);
    for (const auto& s : round.samples) std::printf("      %s\n", s.c_str());
    rounds.push_back(std::move(round));
  }

  // ---- control after ----
  // --debug-perturb-control: the after-request gets a different last prompt id, so that the
  // mismatch path can be shown to fail the run (tests/integration/soak_check.sh).
  std::vector<int32_t> after_prompt = control_prompt;
  if (a.debug_perturb_control) after_prompt.back() = 3 + (after_prompt.back() - 3 + 1) % static_cast<int32_t>(srv.vocab - 3);
  const auto control_after = RunControl(*stub, after_prompt, a.request_timeout_s, &err);
  if (!control_after) std::printf("control (after):  FAILED: %s\n", err.c_str());
  else std::printf("control (after):  %s\n", Join(*control_after).c_str());

  // ---- summary and criteria ----
  std::map<std::string, int> outcomes, unexpected, codes;
  int64_t total_requests = 0;
  for (const Round& r : rounds) {
    total_requests += r.requests;
    for (const auto& [k, v] : r.outcomes) outcomes[k] += v;
    for (const auto& [k, v] : r.unexpected) unexpected[k] += v;
    for (const auto& [k, v] : r.codes) codes[k] += v;
  }
  int n_unexpected = 0;
  for (const auto& [k, v] : unexpected) n_unexpected += v;
  const int n_lost = outcomes.count("lost") ? outcomes["lost"] : 0;

  json criteria = json::array();
  bool pass = true;
  auto criterion = [&](const std::string& name, std::optional<bool> ok, const std::string& detail) {
    // nullopt: could not be checked here (no such figure); reported, not failed.
    criteria.push_back({{"name", name}, {"result", ok ? (*ok ? "PASS" : "FAIL") : "n/a"}, {"detail", detail}});
    if (ok && !*ok) pass = false;
  };
  criterion("unexpected_errors", n_unexpected == 0, std::to_string(n_unexpected) + " (" + CodesString(unexpected) + ")");
  criterion("lost", n_lost == 0, std::to_string(n_lost));
  const bool control_equal = control_before && control_after && *control_before == *control_after;
  criterion("control_ids_equal", control_equal,
            !control_before || !control_after
                ? "a control request failed"
                : std::to_string(control_before->size()) + " ids " + (control_equal ? "equal" : "DIFFER"));
  if (a.metrics_address.empty()) {
    criterion("metrics", std::nullopt, "no --metrics-address: load gauges not checked");
  } else {
    std::string bad;
    for (const Round& r : rounds) {
      if (!r.scraped) bad += " round " + std::to_string(r.index) + ": scrape failed;";
      else if (!r.load_zero) bad += " round " + std::to_string(r.index) + ": running/waiting " + Num(r.running) + "/" + Num(r.waiting) + ";";
    }
    criterion("load_gauges_zero", bad.empty(), bad.empty() ? "after every round" : bad);
  }
  auto growth = [&](const char* name, std::optional<double> Round::*field, double limit) {
    if (std::isinf(limit)) {  // the caller said this figure means nothing here (RSS under ASan's quarantine)
      criterion(name, std::nullopt, "not checked (--no-rss-check)");
      return;
    }
    if (rounds.size() < 2) {
      criterion(name, std::nullopt, "needs 2 rounds");
      return;
    }
    const Round &p = rounds[rounds.size() - 2], &l = rounds.back();
    if (!(p.*field) || !(l.*field) || *(p.*field) <= 0) {
      criterion(name, std::nullopt, "not available");
      return;
    }
    const double g = (*(l.*field) - *(p.*field)) / *(p.*field) * 100.0;
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s -> %s MiB between rounds %d and %d: %+.3f %% (limit %.3f %%)",
                  Mib(p.*field).c_str(), Mib(l.*field).c_str(), p.index, l.index, g, limit);
    criterion(name, g <= limit, buf);
  };
  growth("device_memory_growth", &Round::device_live, a.memory_growth_pct);
  growth("resident_memory_growth", &Round::rss, rss_limit);

  std::printf("\n== soak summary (%s, device %s, %lld requests in %d rounds) ==\n", a.address.c_str(), srv.device.c_str(),
              static_cast<long long>(total_requests), a.rounds);
  std::fputs(kHeader, stdout);
  for (const Round& r : rounds) PrintRound(r, levels_str);
  std::printf("outcomes: %s;  status codes: %s\n", CodesString(outcomes).c_str(), CodesString(codes).c_str());
  for (const auto& c : criteria) {
    std::printf("%-24s %-4s %s\n", c["name"].get<std::string>().c_str(), c["result"].get<std::string>().c_str(),
                c["detail"].get<std::string>().c_str());
  }
  std::printf("%s\n", pass ? "SOAK PASS" : "SOAK FAIL");
  std::fflush(stdout);

  if (!a.json_out.empty()) {
    json rj = json::array();
    for (const Round& r : rounds) rj.push_back(RoundJson(r));
    const json j = {
        {"address", a.address},
        {"server", {{"model", srv.model}, {"device", srv.device}, {"drafter", srv.drafter}, {"max_batch", srv.max_batch},
                    {"max_context", srv.max_context}, {"vocab_size", srv.vocab}, {"max_k", srv.max_k}}},
        {"config", {{"rounds", a.rounds}, {"requests_per_round", a.requests_per_round}, {"concurrency_levels", levels},
                    {"seed", a.seed}, {"prompt_tokens", {a.min_prompt_tokens, a.max_prompt_tokens}},
                    {"max_tokens", mt}, {"k", {k_lo, k_hi}}, {"drafters", drafters},
                    {"cancel_fraction", a.cancel_fraction}, {"deadline_fraction", a.deadline_fraction},
                    {"memory_growth_pct", a.memory_growth_pct}, {"rss_growth_pct", rss_limit}}},
        {"rounds", rj},
        {"control", {{"prompt", control_prompt},
                     {"before", control_before ? json(*control_before) : json(nullptr)},
                     {"after", control_after ? json(*control_after) : json(nullptr)},
                     {"equal", control_equal}}},
        {"totals", {{"requests", total_requests}, {"outcomes", outcomes}, {"codes", codes}, {"unexpected", unexpected},
                    {"lost", n_lost}}},
        {"criteria", criteria},
        {"pass", pass}};
    std::ofstream f(a.json_out);
    f << j.dump(2) << "\n";
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", a.json_out.c_str());
      return 1;
    }
  }
  return pass ? 0 : 1;
}

}  // namespace specd::client
