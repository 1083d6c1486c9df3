// What `specd-client bench` measured: per-request records, and the summary (table + JSON).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace specd::client {

struct RequestRecord {
  bool ok = false;
  bool lost = false;          // OK status but no final message
  std::string error_code;     // gRPC code name when !ok
  double ttft_s = 0, e2e_s = 0;
  std::vector<double> itl_s;  // one per token after the first chunk
  int64_t output_tokens = 0;
  uint64_t draft_tokens = 0, accepted_tokens = 0, verify_steps = 0;
  std::vector<uint64_t> drafted_per_pos, accepted_per_pos;
};

struct BenchConfig {
  std::string address;
  int concurrency = 0;
  double request_rate = 0;
  int warmup = 0;
};

// Linear interpolation between closest ranks (numpy's default); 0 for an empty sample.
double Percentile(std::vector<double> v, double q);

nlohmann::json Summarize(const std::vector<RequestRecord>& recs, double duration_s, const BenchConfig& cfg);
std::string FormatTable(const nlohmann::json& summary);

}  // namespace specd::client
