// Prometheus metrics of the daemon (text exposition format 0.0.4), with vLLM-compatible
// speculative-decoding names under the `specd:` prefix (docs/server.md). Updated by the
// scheduler thread and the gRPC threads, rendered by the HTTP thread: one mutex, low traffic.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace specd::serve {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double v, uint64_t times = 1);
  void Render(std::string& out, const std::string& name) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative); last = +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();

  // Per engine step, per request: the speculative work done since the last step by `drafter`
  // (the request's drafter: a server may serve several). Rendered as the vLLM-named totals and
  // again per drafter.
  void AddSpecDelta(const std::string& drafter, int64_t drafts, int64_t draft_tokens, int64_t accepted_tokens,
                    const std::vector<int64_t>& accepted_per_pos);
  void AddPromptTokens(int64_t n);
  void AddGenerationTokens(int64_t n);
  void ObserveTtft(double s);
  // Inter-token latency: a chunk of `tokens` arrived `interval_s` after the previous one; each
  // token is observed with interval_s / tokens (speculation delivers several per step).
  void ObserveItl(double interval_s, int64_t tokens);
  // A request that ended with a final message (finished_reason: length | eos | stop | abort).
  void RequestFinished(const std::string& finished_reason, double e2e_s);
  // A request that ended with an error status (code name: INVALID_ARGUMENT, CANCELLED, ...).
  void RequestFailed(const std::string& code);
  void StepFailed();
  // kv_usage: the fraction of the target's KV blocks reserved by admitted requests.
  void SetGauges(int64_t waiting, int64_t running, int64_t slots_in_use, double kv_usage = 0.0);
  // The prefix cache since the last call: prompt tokens looked up and found, evictions; its bytes now.
  void AddPrefixCache(int64_t queried_tokens, int64_t hit_tokens, int64_t evictions, int64_t bytes);

  // Memory of the backend (scheduler thread, a few times a second).
  struct MemoryGauges {
    int64_t device_used_bytes = -1;  // the whole device (total - free); -1: no device
    int64_t graphs = 0, graph_limit = 0, graph_workspace_bytes = 0, graph_exec_bytes = 0, pool_cached_bytes = 0;
    int64_t graph_captures = 0, graph_replays = 0, graph_evictions = 0, graph_capture_failures = 0;
    int64_t alloc_failures = 0;
  };
  void SetMemory(const MemoryGauges& m);
  // The startup memory plan, by part (constant for the process's life).
  void SetMemoryPlan(std::vector<std::pair<std::string, int64_t>> parts, int64_t budget);

  std::string Render() const;

  // Read back by tests and logs.
  int64_t slots_in_use() const;

 private:
  struct SpecCounts {
    uint64_t drafts = 0, draft_tokens = 0, accepted_tokens = 0;
    std::vector<uint64_t> accepted_per_pos;
    void Add(int64_t d, int64_t dt, int64_t at, const std::vector<int64_t>& per_pos);
  };
  mutable std::mutex mu_;
  SpecCounts spec_;                                 // all drafters
  std::map<std::string, SpecCounts> spec_by_drafter_;
  uint64_t prompt_tokens_ = 0, generation_tokens_ = 0, step_failures_ = 0;
  std::map<std::string, uint64_t> success_, failure_;
  int64_t waiting_ = 0, running_ = 0, slots_ = 0;
  double kv_usage_ = 0.0;
  MemoryGauges mem_;
  std::vector<std::pair<std::string, int64_t>> plan_;
  int64_t plan_budget_ = -1;
  uint64_t prefix_queries_ = 0, prefix_hits_ = 0, prefix_evictions_ = 0;
  int64_t prefix_bytes_ = 0;
  bool have_prefix_ = false;
  bool have_mem_ = false;
  Histogram ttft_, itl_, e2e_;
};

}  // namespace specd::serve
