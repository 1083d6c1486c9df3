#include "client/bench_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

namespace specd::client {
namespace {

nlohmann::json Dist(const std::vector<double>& seconds) {
  std::vector<double> ms(seconds.size());
  std::transform(seconds.begin(), seconds.end(), ms.begin(), [](double s) { return s * 1e3; });
  double mean = 0;
  for (double v : ms) mean += v;
  if (!ms.empty()) mean /= static_cast<double>(ms.size());
  return {{"p50", Percentile(ms, 0.50)}, {"p90", Percentile(ms, 0.90)}, {"p99", Percentile(ms, 0.99)},
          {"mean", mean}};
}

std::string Fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

nlohmann::json Summarize(const std::vector<RequestRecord>& recs, double duration_s, const BenchConfig& cfg) {
  int64_t completed = 0, errors = 0, lost = 0, out_tokens = 0;
  uint64_t draft = 0, accepted = 0, steps = 0;
  std::vector<uint64_t> drafted_pos, accepted_pos;
  std::vector<double> ttft, itl, e2e;
  std::map<std::string, int64_t> codes;
  for (const auto& r : recs) {
    if (r.lost) {
      ++lost;
      continue;
    }
    if (!r.ok) {
      ++errors;
      ++codes[r.error_code];
      continue;
    }
    ++completed;
    out_tokens += r.output_tokens;
    draft += r.draft_tokens;
    accepted += r.accepted_tokens;
    steps += r.verify_steps;
    if (drafted_pos.size() < r.drafted_per_pos.size()) {
      drafted_pos.resize(r.drafted_per_pos.size(), 0);
      accepted_pos.resize(r.drafted_per_pos.size(), 0);
    }
    for (size_t i = 0; i < r.drafted_per_pos.size(); ++i) {
      drafted_pos[i] += r.drafted_per_pos[i];
      accepted_pos[i] += i < r.accepted_per_pos.size() ? r.accepted_per_pos[i] : 0;
    }
    if (r.output_tokens > 0) ttft.push_back(r.ttft_s);
    itl.insert(itl.end(), r.itl_s.begin(), r.itl_s.end());
    e2e.push_back(r.e2e_s);
  }
  std::vector<double> per_pos(drafted_pos.size());
  for (size_t i = 0; i < per_pos.size(); ++i) {
    per_pos[i] = drafted_pos[i] ? static_cast<double>(accepted_pos[i]) / static_cast<double>(drafted_pos[i]) : 0.0;
  }
  const double d = duration_s > 0 ? duration_s : 1e-9;
  return {
      {"address", cfg.address},
      {"concurrency", cfg.concurrency},
      {"request_rate", cfg.request_rate > 0 ? nlohmann::json(cfg.request_rate) : nlohmann::json("inf")},
      {"warmup", cfg.warmup},
      {"requests", static_cast<int64_t>(recs.size())},
      {"completed", completed},
      {"errors", errors},
      {"lost", lost},
      {"error_codes", codes},
      {"duration_s", duration_s},
      {"requests_per_s", static_cast<double>(completed) / d},
      {"output_tokens", out_tokens},
      {"output_tokens_per_s", static_cast<double>(out_tokens) / d},
      {"draft_tokens", draft},
      {"accepted_tokens", accepted},
      {"verify_steps", steps},
      {"acceptance_rate", draft ? static_cast<double>(accepted) / static_cast<double>(draft) : 0.0},
      // Tokens per target forward, as the engine defines it (1 + accepted drafts per step).
      {"mean_acceptance_length",
       steps ? static_cast<double>(accepted + steps) / static_cast<double>(steps) : 0.0},
      {"per_position_acceptance", per_pos},
      {"ttft_ms", Dist(ttft)},
      {"itl_ms", Dist(itl)},
      {"e2e_ms", Dist(e2e)},
  };
}

std::string FormatTable(const nlohmann::json& s) {
  std::string t;
  auto row = [&](const std::string& k, const std::string& v) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "  %-24s %s\n", k.c_str(), v.c_str());
    t += buf;
  };
  const std::string rate =
      s["request_rate"].is_string() ? "inf" : Fmt("%.2f", s["request_rate"].get<double>());
  t += "specd-client bench (" + s["address"].get<std::string>() + ", concurrency " +
       std::to_string(s["concurrency"].get<int>()) + ", request rate " + rate + ")\n";
  row("requests", std::to_string(s["requests"].get<int64_t>()));
  row("completed", std::to_string(s["completed"].get<int64_t>()));
  row("errors", std::to_string(s["errors"].get<int64_t>()) +
                    (s["error_codes"].empty() ? "" : "  " + s["error_codes"].dump()));
  row("lost", std::to_string(s["lost"].get<int64_t>()));
  row("duration (s)", Fmt("%.3f", s["duration_s"].get<double>()));
  row("requests/s", Fmt("%.2f", s["requests_per_s"].get<double>()));
  row("output tokens", std::to_string(s["output_tokens"].get<int64_t>()));
  row("output tokens/s", Fmt("%.1f", s["output_tokens_per_s"].get<double>()));
  row("acceptance rate", Fmt("%.3f", s["acceptance_rate"].get<double>()));
  row("mean acceptance length", Fmt("%.3f", s["mean_acceptance_length"].get<double>()));
  std::string pp;
  for (const auto& v : s["per_position_acceptance"]) pp += Fmt("%.3f ", v.get<double>());
  row("per-position acceptance", pp.empty() ? "-" : pp);
  char buf[160];
  std::snprintf(buf, sizeof buf, "  %-24s %10s %10s %10s %10s\n", "latency (ms)", "p50", "p90", "p99", "mean");
  t += buf;
  for (const char* k : {"ttft_ms", "itl_ms", "e2e_ms"}) {
    const auto& d = s[k];
    std::snprintf(buf, sizeof buf, "  %-24s %10.3f %10.3f %10.3f %10.3f\n", k, d["p50"].get<double>(),
                  d["p90"].get<double>(), d["p99"].get<double>(), d["mean"].get<double>());
    t += buf;
  }
  return t;
}

}  // namespace specd::client
