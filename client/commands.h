// specd-client subcommands (docs/server.md). Each returns the process exit code.
#pragma once

#include <limits>
#include <string>

#include "client/request.h"

namespace specd::client {

struct GenerateArgs {
  std::string address, prompt, prompt_ids, chat_json, request_id;
  int64_t timeout_ms = 0;  // 0 = no deadline
  bool json = false;
  SamplingFlags sampling;
};
int RunGenerate(const GenerateArgs& a);

struct BenchArgs {
  std::string address, prompts, json_out;
  int num_requests = 64, concurrency = 8, warmup = 2;
  double request_rate = 0;  // requests/s, Poisson arrivals; 0 = as fast as concurrency allows
  int64_t timeout_ms = 0;
  SamplingFlags sampling;   // --max-tokens here is the default for prompts without one
  // --multi-turn N: chat sessions of N turns instead (client/bench_multiturn.cpp).
  int multi_turn = 0, sessions = 4;
  int64_t system_tokens = 256, turn_tokens = 32;
};
int RunBench(const BenchArgs& a);
int RunMultiTurnBench(const BenchArgs& a);

// `soak`: rounds of varied requests (client/soak.cpp, docs/soak.md). Exit 0 only when nothing
// unexpected happened: no unexpected error, no lost stream, load gauges 0 after each round,
// memory flat between the last two rounds, and the greedy control's ids equal before and after.
struct SoakArgs {
  std::string address, metrics_address, json_out;
  int rounds = 6, requests_per_round = 400;
  std::string concurrency_levels = "1,8,16,64";  // every round runs each level in turn
  uint64_t seed = 1;
  int min_prompt_tokens = 16, max_prompt_tokens = 400;
  std::string max_tokens_range = "8,256", k_range = "1,7", drafters = "none,ngram,draft";
  double cancel_fraction = 0.03, deadline_fraction = 0.03;
  // Requests whose prompt starts with one of four fixed prompts of shared_prefix_tokens ids (the
  // prefix cache's traffic); 0 = every prompt random.
  double shared_prefix_fraction = 0;
  int64_t shared_prefix_tokens = 96;
  double memory_growth_pct = 1.0;    // device memory (and RSS, unless rss_growth_pct is given)
  double rss_growth_pct = std::numeric_limits<double>::quiet_NaN();  // NaN: = memory_growth_pct
  bool no_rss_check = false;
  int64_t server_pid = 0;            // > 0: RSS from /proc/PID/status when /metrics has none
  int64_t request_timeout_s = 300;   // a request not back by then is lost
  double settle_s = 10;              // after a round: how long the load gauges may take to reach 0
  bool debug_perturb_control = false;
};
int RunSoak(const SoakArgs& a);

int RunHealth(const std::string& address, const std::string& service, int64_t timeout_ms);
int RunInfo(const std::string& address, int64_t timeout_ms);

}  // namespace specd::client
