#include "server/metrics.h"

#include <algorithm>

#include <fmt/format.h>

#include <unistd.h>

#include <cstdio>

namespace specd::serve {
namespace {

// vLLM's buckets, extended downwards: a CPU fixture model produces sub-millisecond tokens.
const std::vector<double> kTtftBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                          0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0};
const std::vector<double> kItlBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                         0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0};
const std::vector<double> kE2eBuckets = {0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0,
                                         10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 240.0, 480.0, 960.0};

std::string Num(double v) { return fmt::format("{}", v); }

void Header(std::string& out, const std::string& name, const char* type, const char* help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void Scalar(std::string& out, const std::string& name, const char* type, const char* help, double v) {
  Header(out, name, type, help);
  out += fmt::format("{} {}\n", name, Num(v));
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double v, uint64_t times) {
  const size_t i = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  counts_[i] += times;
  sum_ += v * static_cast<double>(times);
  count_ += times;
}

void Histogram::Render(std::string& out, const std::string& name) const {
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, Num(bounds_[i]), cum);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, count_, name, Num(sum_), name,
                     count_);
}

Metrics::Metrics() : ttft_(kTtftBuckets), itl_(kItlBuckets), e2e_(kE2eBuckets) {}

void Metrics::SpecCounts::Add(int64_t d, int64_t dt, int64_t at, const std::vector<int64_t>& per_pos) {
  drafts += static_cast<uint64_t>(d);
  draft_tokens += static_cast<uint64_t>(dt);
  accepted_tokens += static_cast<uint64_t>(at);
  if (accepted_per_pos.size() < per_pos.size()) accepted_per_pos.resize(per_pos.size(), 0);
  for (size_t i = 0; i < per_pos.size(); ++i) accepted_per_pos[i] += static_cast<uint64_t>(per_pos[i]);
}

void Metrics::AddSpecDelta(const std::string& drafter, int64_t drafts, int64_t draft_tokens, int64_t accepted_tokens,
                           const std::vector<int64_t>& accepted_per_pos) {
  std::lock_guard lk(mu_);
  spec_.Add(drafts, draft_tokens, accepted_tokens, accepted_per_pos);
  spec_by_drafter_[drafter].Add(drafts, draft_tokens, accepted_tokens, accepted_per_pos);
}

void Metrics::AddPromptTokens(int64_t n) {
  std::lock_guard lk(mu_);
  prompt_tokens_ += static_cast<uint64_t>(n);
}

void Metrics::AddGenerationTokens(int64_t n) {
  std::lock_guard lk(mu_);
  generation_tokens_ += static_cast<uint64_t>(n);
}

void Metrics::ObserveTtft(double s) {
  std::lock_guard lk(mu_);
  ttft_.Observe(s);
}

void Metrics::ObserveItl(double interval_s, int64_t tokens) {
  if (tokens <= 0) return;
  std::lock_guard lk(mu_);
  itl_.Observe(interval_s / static_cast<double>(tokens), static_cast<uint64_t>(tokens));
}

void Metrics::RequestFinished(const std::string& reason, double e2e_s) {
  std::lock_guard lk(mu_);
  ++success_[reason];
  e2e_.Observe(e2e_s);
}

void Metrics::RequestFailed(const std::string& code) {
  std::lock_guard lk(mu_);
  ++failure_[code];
}

void Metrics::StepFailed() {
  std::lock_guard lk(mu_);
  ++step_failures_;
}

void Metrics::SetGauges(int64_t waiting, int64_t running, int64_t slots, double kv_usage) {
  std::lock_guard lk(mu_);
  waiting_ = waiting;
  running_ = running;
  slots_ = slots;
  kv_usage_ = kv_usage;
}

void Metrics::AddPrefixCache(int64_t queried_tokens, int64_t hit_tokens, int64_t evictions, int64_t bytes) {
  std::lock_guard lk(mu_);
  // Counters never go down (a negative delta would wrap).
  prefix_queries_ += static_cast<uint64_t>(std::max<int64_t>(queried_tokens, 0));
  prefix_hits_ += static_cast<uint64_t>(std::max<int64_t>(hit_tokens, 0));
  prefix_evictions_ += static_cast<uint64_t>(std::max<int64_t>(evictions, 0));
  prefix_bytes_ = bytes;
  have_prefix_ = true;
}

void Metrics::SetMemory(const MemoryGauges& m) {
  std::lock_guard lk(mu_);
  mem_ = m;
  have_mem_ = true;
}

namespace {
// This process's resident memory, from /proc (0 where there is none).
int64_t ResidentBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  long pages = 0, resident = 0;
  const int n = std::fscanf(f, "%ld %ld", &pages, &resident);
  std::fclose(f);
  return n == 2 ? static_cast<int64_t>(resident) * sysconf(_SC_PAGESIZE) : 0;
}
}  // namespace

int64_t Metrics::slots_in_use() const {
  std::lock_guard lk(mu_);
  return slots_;
}

void Metrics::SetMemoryPlan(std::vector<std::pair<std::string, int64_t>> parts, int64_t budget) {
  std::lock_guard lk(mu_);
  plan_ = std::move(parts);
  plan_budget_ = budget;
}

std::string Metrics::Render() const {
  std::lock_guard lk(mu_);
  std::string out;
  Scalar(out, "specd:spec_decode_num_drafts_total", "counter", "Speculative steps that proposed drafts.",
         static_cast<double>(spec_.drafts));
  Scalar(out, "specd:spec_decode_num_draft_tokens_total", "counter", "Draft tokens proposed.",
         static_cast<double>(spec_.draft_tokens));
  Scalar(out, "specd:spec_decode_num_accepted_tokens_total", "counter", "Draft tokens accepted by the target.",
         static_cast<double>(spec_.accepted_tokens));
  Header(out, "specd:spec_decode_num_accepted_tokens_per_pos", "counter",
         "Accepted draft tokens by position in the draft (0 = first).");
  for (size_t i = 0; i < spec_.accepted_per_pos.size(); ++i) {
    out += fmt::format("specd:spec_decode_num_accepted_tokens_per_pos{{position=\"{}\"}} {}\n", i,
                       spec_.accepted_per_pos[i]);
  }
  // The same per drafter (a server may serve several; requests choose).
  const std::pair<const char*, uint64_t SpecCounts::*> per_drafter[] = {
      {"specd:spec_decode_drafter_drafts_total", &SpecCounts::drafts},
      {"specd:spec_decode_drafter_draft_tokens_total", &SpecCounts::draft_tokens},
      {"specd:spec_decode_drafter_accepted_tokens_total", &SpecCounts::accepted_tokens}};
  for (const auto& [name, field] : per_drafter) {
    Header(out, name, "counter", "As the spec_decode_num_ counter of the same name, by drafter.");
    for (const auto& [d, c] : spec_by_drafter_) out += fmt::format("{}{{drafter=\"{}\"}} {}\n", name, d, c.*field);
  }
  Header(out, "specd:spec_decode_drafter_accepted_tokens_per_pos", "counter",
         "Accepted draft tokens by drafter and position in the draft (0 = first).");
  for (const auto& [d, c] : spec_by_drafter_) {
    for (size_t i = 0; i < c.accepted_per_pos.size(); ++i) {
      out += fmt::format("specd:spec_decode_drafter_accepted_tokens_per_pos{{drafter=\"{}\",position=\"{}\"}} {}\n",
                         d, i, c.accepted_per_pos[i]);
    }
  }
  Header(out, "specd:request_success_total", "counter", "Requests that completed, by finish reason.");
  for (const char* r : {"length", "eos", "stop", "abort"}) {
    const auto it = success_.find(r);
    out += fmt::format("specd:request_success_total{{finished_reason=\"{}\"}} {}\n", r,
                       it == success_.end() ? 0 : it->second);
  }
  Header(out, "specd:request_failure_total", "counter", "Requests that ended with an error status, by gRPC code.");
  for (const auto& [code, n] : failure_) {
    out += fmt::format("specd:request_failure_total{{code=\"{}\"}} {}\n", code, n);
  }
  Scalar(out, "specd:prompt_tokens_total", "counter", "Prompt tokens admitted.", static_cast<double>(prompt_tokens_));
  Scalar(out, "specd:generation_tokens_total", "counter", "Tokens generated.", static_cast<double>(generation_tokens_));
  Scalar(out, "specd:engine_step_failures_total", "counter", "Engine steps that failed (their requests got INTERNAL, or RESOURCE_EXHAUSTED when memory ran out).",
         static_cast<double>(step_failures_));
  Header(out, "specd:time_to_first_token_seconds", "histogram", "Time from arrival to the first generated token.");
  ttft_.Render(out, "specd:time_to_first_token_seconds");
  Header(out, "specd:inter_token_latency_seconds", "histogram",
         "Time between generated tokens (a chunk's interval divided by its token count).");
  itl_.Render(out, "specd:inter_token_latency_seconds");
  Header(out, "specd:e2e_request_latency_seconds", "histogram", "Time from arrival to the final message.");
  e2e_.Render(out, "specd:e2e_request_latency_seconds");
  Scalar(out, "specd:num_requests_waiting", "gauge", "Requests queued for a slot.", static_cast<double>(waiting_));
  Scalar(out, "specd:num_requests_running", "gauge", "Requests in the engine.", static_cast<double>(running_));
  Scalar(out, "specd:cache_slots_in_use", "gauge", "Target cache slots held by sequences.", static_cast<double>(slots_));
  Scalar(out, "specd:kv_cache_usage_perc", "gauge",
         "Fraction of the target's KV cache blocks reserved by admitted requests (1 = full: new requests wait).",
         kv_usage_);
  Scalar(out, "specd:process_resident_memory_bytes", "gauge", "Resident host memory of the daemon.",
         static_cast<double>(ResidentBytes()));
  if (!plan_.empty()) {
    Header(out, "specd:memory_plan_bytes", "gauge",
           "The startup memory plan by part (docs/memory.md; workspace parts are estimates).");
    for (const auto& [part, bytes] : plan_) out += fmt::format("specd:memory_plan_bytes{{part=\"{}\"}} {}\n", part, bytes);
    if (plan_budget_ >= 0) {
      Scalar(out, "specd:memory_budget_bytes", "gauge", "The device memory the plan was sized for (--gpu-memory-fraction).",
             static_cast<double>(plan_budget_));
    }
  }
  if (have_prefix_) {
    Scalar(out, "specd:prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.",
           static_cast<double>(prefix_queries_));
    Scalar(out, "specd:prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache (not computed).",
           static_cast<double>(prefix_hits_));
    Scalar(out, "specd:prefix_cache_evictions_total", "counter", "Prefix cache entries evicted.",
           static_cast<double>(prefix_evictions_));
    Scalar(out, "specd:prefix_cache_bytes", "gauge", "Bytes the prefix cache holds (KV blocks + GDN snapshots).",
           static_cast<double>(prefix_bytes_));
  }
  if (have_mem_) {
    if (mem_.device_used_bytes >= 0) {
      Scalar(out, "specd:device_memory_used_bytes", "gauge", "Device memory in use (whole device: total - free).",
             static_cast<double>(mem_.device_used_bytes));
      Scalar(out, "specd:cuda_graphs", "gauge", "Captured CUDA graphs held.", static_cast<double>(mem_.graphs));
      Scalar(out, "specd:cuda_graph_limit", "gauge", "Most CUDA graphs held (--cuda-graph-limit).",
             static_cast<double>(mem_.graph_limit));
      Scalar(out, "specd:cuda_graph_workspace_bytes", "gauge",
             "The activation workspace all graphs share (set by the largest captured forward).",
             static_cast<double>(mem_.graph_workspace_bytes));
      Scalar(out, "specd:cuda_graph_exec_bytes", "gauge", "Device memory of the graph executables (measured).",
             static_cast<double>(mem_.graph_exec_bytes));
      Scalar(out, "specd:device_pool_cached_bytes", "gauge",
             "Freed device blocks kept for reuse (capped at 2 GiB).", static_cast<double>(mem_.pool_cached_bytes));
      Scalar(out, "specd:cuda_graph_captures_total", "counter", "Graphs captured.",
             static_cast<double>(mem_.graph_captures));
      Scalar(out, "specd:cuda_graph_replays_total", "counter", "Forwards run as a graph replay.",
             static_cast<double>(mem_.graph_replays));
      Scalar(out, "specd:cuda_graph_evictions_total", "counter", "Graphs dropped to stay within the limit.",
             static_cast<double>(mem_.graph_evictions));
      Scalar(out, "specd:cuda_graph_capture_failures_total", "counter",
             "Captures abandoned (the forward ran op by op instead).", static_cast<double>(mem_.graph_capture_failures));
    }
    Scalar(out, "specd:allocation_failures_total", "counter",
           "Allocations the backend could not serve (the step's requests got RESOURCE_EXHAUSTED).",
           static_cast<double>(mem_.alloc_failures));
  }
  return out;
}

}  // namespace specd::serve
