// `specd-client bench`: many streamed requests at a fixed concurrency (and optionally a Poisson
// arrival rate), measuring TTFT, inter-token latency, end-to-end latency, throughput and the
// speculative acceptance the server reports. Each in-flight request has its own thread: the
// client is a load generator, and C blocking streams are the simplest correct way to keep C
// requests in flight.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "client/bench_prompts.h"
#include "client/bench_report.h"
#include "client/commands.h"
#include "client/common.h"
#include "specd/v1/specd.grpc.pb.h"

namespace specd::client {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

RequestRecord RunOne(v1::Specd::Stub& stub, const v1::GenerateRequest& req, int64_t timeout_ms) {
  RequestRecord r;
  grpc::ClientContext ctx;
  if (timeout_ms > 0) ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  const auto t0 = Clock::now();
  auto last = t0;
  bool finished = false;
  v1::GenerateResponse msg;
  auto reader = stub.Generate(&ctx, req);
  while (reader->Read(&msg)) {
    const auto now = Clock::now();
    const int n = msg.token_ids_size();
    if (n > 0) {
      if (r.output_tokens == 0) {
        r.ttft_s = Seconds(now - t0);
      } else {
        // Speculation delivers several tokens per chunk: each gets an equal share.
        for (int i = 0; i < n; ++i) r.itl_s.push_back(Seconds(now - last) / n);
      }
      r.output_tokens += n;
      last = now;
    }
    if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      finished = true;
      const v1::SpeculativeStats& s = msg.stats();
      r.draft_tokens = s.draft_tokens();
      r.accepted_tokens = s.accepted_tokens();
      r.verify_steps = s.verify_steps();
      r.drafted_per_pos.assign(s.drafted_per_pos().begin(), s.drafted_per_pos().end());
      r.accepted_per_pos.assign(s.accepted_per_pos().begin(), s.accepted_per_pos().end());
    }
  }
  const grpc::Status st = reader->Finish();
  r.e2e_s = Seconds(Clock::now() - t0);
  r.ok = st.ok() && finished;
  r.lost = st.ok() && !finished;
  if (!st.ok()) r.error_code = GrpcCodeName(st.error_code());
  return r;
}

// A progress bar on stderr: redrawn in place on a terminal, a line per 10% otherwise (logs).
class Progress {
 public:
  Progress(int total, const char* label) : total_(total), label_(label), tty_(isatty(2)) {}
  void Update(int done, int errors, double elapsed_s) {
    std::lock_guard lk(mu_);
    if (tty_) {
      const int w = 30, fill = total_ ? done * w / total_ : w;
      std::fprintf(stderr, "\r%s [%.*s%*s] %d/%d  errors %d  %.1f req/s ", label_, fill,
                   "##############################", w - fill, "", done, total_, errors,
                   elapsed_s > 0 ? done / elapsed_s : 0.0);
      if (done == total_) std::fputc('\n', stderr);
    } else {
      const int decile = total_ ? done * 10 / total_ : 10;
      if (decile > last_decile_) {
        last_decile_ = decile;
        std::fprintf(stderr, "%s %d/%d  errors %d  %.1f s\n", label_, done, total_, errors, elapsed_s);
      }
    }
  }

 private:
  std::mutex mu_;
  int total_;
  const char* label_;
  bool tty_;
  int last_decile_ = -1;
};

// Runs `n` requests with `concurrency` in flight, starting request i no earlier than arrival[i].
std::vector<RequestRecord> RunPhase(v1::Specd::Stub& stub, const std::vector<v1::GenerateRequest>& reqs,
                                    int concurrency, const std::vector<double>& arrival, int64_t timeout_ms,
                                    Progress* progress, double* duration_s) {
  std::vector<RequestRecord> recs(reqs.size());
  std::atomic<size_t> next{0};
  std::atomic<int> done{0}, errors{0};
  const auto t0 = Clock::now();
  std::vector<std::thread> workers;
  for (int w = 0; w < concurrency; ++w) {
    workers.emplace_back([&] {
      for (size_t i; (i = next.fetch_add(1)) < reqs.size();) {
        if (!arrival.empty()) std::this_thread::sleep_until(t0 + std::chrono::duration_cast<Clock::duration>(
                                                                     std::chrono::duration<double>(arrival[i])));
        recs[i] = RunOne(stub, reqs[i], timeout_ms);
        if (!recs[i].ok) ++errors;
        const int d = ++done;
        if (progress) progress->Update(d, errors.load(), Seconds(Clock::now() - t0));
      }
    });
  }
  for (auto& t : workers) t.join();
  *duration_s = Seconds(Clock::now() - t0);
  return recs;
}

}  // namespace

int RunBench(const BenchArgs& a) {
  if (a.num_requests < 1 || a.concurrency < 1 || a.warmup < 0 || a.request_rate < 0) {
    std::fprintf(stderr, "--num-requests and --concurrency must be >= 1, --warmup and --request-rate >= 0\n");
    return 2;
  }
  auto stub = v1::Specd::NewStub(MakeChannel(a.address));
  std::vector<BenchPrompt> prompts;
  std::string err;
  if (!a.prompts.empty()) {
    if (!LoadPromptsJsonl(a.prompts, &prompts, &err)) {
      std::fprintf(stderr, "%s\n", err.c_str());
      return 2;
    }
  } else {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ModelInfo info;
    const grpc::Status st = stub->GetModelInfo(&ctx, {}, &info);
    if (!st.ok()) {
      PrintStatus(st);
      return 1;
    }
    prompts = BuiltinPrompts(info.has_tokenizer());
  }
  v1::GenerateRequest base;
  if (!ApplySamplingFlags(a.sampling, &base, &err)) {
    std::fprintf(stderr, "%s\n", err.c_str());
    return 2;
  }
  if (!base.sampling().has_max_tokens()) base.mutable_sampling()->set_max_tokens(64);
  auto make = [&](int i) {
    v1::GenerateRequest r = base;
    const BenchPrompt& p = prompts[static_cast<size_t>(i) % prompts.size()];
    if (p.ids.empty()) {
      r.set_text(p.text);
    } else {
      r.mutable_token_ids()->mutable_ids()->Add(p.ids.begin(), p.ids.end());
    }
    if (p.max_tokens) r.mutable_sampling()->set_max_tokens(*p.max_tokens);
    return r;
  };

  double d = 0;
  if (a.warmup > 0) {
    std::vector<v1::GenerateRequest> warm;
    for (int i = 0; i < a.warmup; ++i) warm.push_back(make(i));
    RunPhase(*stub, warm, std::min(a.concurrency, a.warmup), {}, a.timeout_ms, nullptr, &d);
  }
  std::vector<v1::GenerateRequest> reqs;
  for (int i = 0; i < a.num_requests; ++i) reqs.push_back(make(i));
  std::vector<double> arrival;
  if (a.request_rate > 0) {  // Poisson arrivals, fixed seed: runs are comparable
    std::mt19937_64 rng(0);
    std::exponential_distribution<double> gap(a.request_rate);
    double t = 0;
    for (int i = 0; i < a.num_requests; ++i) arrival.push_back(t += gap(rng));
  }
  Progress progress(a.num_requests, "bench");
  const auto recs = RunPhase(*stub, reqs, a.concurrency, arrival, a.timeout_ms, &progress, &d);
  const nlohmann::json summary = Summarize(recs, d, BenchConfig{a.address, a.concurrency, a.request_rate, a.warmup});
  std::fputs(FormatTable(summary).c_str(), stdout);
  if (!a.json_out.empty()) {
    std::ofstream f(a.json_out);
    f << summary.dump(2) << "\n";
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", a.json_out.c_str());
      return 1;
    }
  }
  // Scripts rely on this: any failed or lost request fails the run.
  return summary["errors"].get<int64_t>() == 0 && summary["lost"].get<int64_t>() == 0 ? 0 : 1;
}

}  // namespace specd::client
