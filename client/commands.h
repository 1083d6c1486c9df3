// specd-client subcommands (DESIGN.md §7). Each returns the process exit code.
#pragma once

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
};
int RunBench(const BenchArgs& a);

int RunHealth(const std::string& address, const std::string& service, int64_t timeout_ms);
int RunInfo(const std::string& address, int64_t timeout_ms);

}  // namespace specd::client
