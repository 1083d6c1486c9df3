// `specd-client bench --multi-turn N`: chat sessions of N turns sharing one system prompt. Turn t
// of a session sends the previous turn's prompt + its reply + a new user message (token ids, so
// it needs no tokenizer), which is what a chat client sends. Sessions run side by side, turns of
// one session in order. Per turn: TTFT, prompt tokens, and the prompt tokens the server took from
// its prefix cache (usage.cached_prompt_tokens): run against `--prefix-cache on` and `off` to see
// what the cache saves (docs/prefix-cache.md, docs/PERFORMANCE.md).
#include <algorithm>
#include <chrono>
#include <string>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "client/bench_report.h"
#include "client/commands.h"
#include "client/common.h"
#include "specd/v1/specd.grpc.pb.h"

namespace specd::client {
namespace {

using Clock = std::chrono::steady_clock;

struct Turn {
  bool ok = false;
  std::string error;
  double ttft_s = 0, e2e_s = 0;
  int64_t prompt_tokens = 0, cached_tokens = 0;
  std::vector<int32_t> ids;
};

Turn RunTurn(v1::Specd::Stub& stub, const v1::GenerateRequest& req) {
  Turn t;
  grpc::ClientContext ctx;
  const auto t0 = Clock::now();
  v1::GenerateResponse msg;
  auto reader = stub.Generate(&ctx, req);
  bool finished = false;
  while (reader->Read(&msg)) {
    if (msg.token_ids_size() > 0 && t.ids.empty()) t.ttft_s = std::chrono::duration<double>(Clock::now() - t0).count();
    t.ids.insert(t.ids.end(), msg.token_ids().begin(), msg.token_ids().end());
    if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      finished = true;
      t.prompt_tokens = msg.usage().prompt_tokens();
      t.cached_tokens = msg.usage().cached_prompt_tokens();
    }
  }
  const grpc::Status st = reader->Finish();
  t.e2e_s = std::chrono::duration<double>(Clock::now() - t0).count();
  t.ok = st.ok() && finished;
  if (!st.ok()) t.error = std::string(GrpcCodeName(st.error_code())) + ": " + st.error_message();
  return t;
}

// Deterministic ids in [16, vocab - 1): the same for the same (seed, n).
std::vector<int32_t> Ids(int64_t n, uint64_t seed, int64_t vocab) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 11;
  const uint64_t span = static_cast<uint64_t>(std::max<int64_t>(vocab - 17, 1));
  for (auto& t : v) {
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    t = static_cast<int32_t>(16 + (s >> 17) % span);
  }
  return v;
}

}  // namespace

int RunMultiTurnBench(const BenchArgs& a) {
  if (a.multi_turn < 1 || a.sessions < 1 || a.system_tokens < 0 || a.turn_tokens < 1) {
    std::fprintf(stderr, "--multi-turn and --sessions must be >= 1, --system-tokens >= 0, --turn-tokens >= 1\n");
    return 2;
  }
  auto stub = v1::Specd::NewStub(MakeChannel(a.address));
  v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    const grpc::Status st = stub->GetModelInfo(&ctx, {}, &info);
    if (!st.ok()) {
      PrintStatus(st);
      return 1;
    }
  }
  v1::GenerateRequest base;
  std::string err;
  if (!ApplySamplingFlags(a.sampling, &base, &err)) {
    std::fprintf(stderr, "%s\n", err.c_str());
    return 2;
  }
  if (!base.sampling().has_max_tokens()) base.mutable_sampling()->set_max_tokens(32);
  if (!base.sampling().has_ignore_eos()) base.mutable_sampling()->set_ignore_eos(true);
  const int64_t vocab = static_cast<int64_t>(info.vocab_size());
  const std::vector<int32_t> system = Ids(a.system_tokens, 1, vocab);
  const size_t S = static_cast<size_t>(a.sessions), T = static_cast<size_t>(a.multi_turn);
  std::vector<std::vector<Turn>> turns(S, std::vector<Turn>(T));
  std::vector<std::thread> threads;
  for (size_t s = 0; s < S; ++s) {
    threads.emplace_back([&, s] {
      std::vector<int32_t> history = system;
      for (size_t t = 0; t < T; ++t) {
        const auto user = Ids(a.turn_tokens, 1000 + s * 1000 + t, vocab);
        history.insert(history.end(), user.begin(), user.end());
        v1::GenerateRequest r = base;
        r.mutable_token_ids()->mutable_ids()->Add(history.begin(), history.end());
        turns[s][t] = RunTurn(*stub, r);
        if (!turns[s][t].ok) return;
        history.insert(history.end(), turns[s][t].ids.begin(), turns[s][t].ids.end());
      }
    });
  }
  for (auto& th : threads) th.join();

  nlohmann::json out = {{"address", a.address}, {"sessions", a.sessions}, {"turns", a.multi_turn},
                        {"system_tokens", a.system_tokens}, {"turn_tokens", a.turn_tokens},
                        {"max_tokens", base.sampling().max_tokens()}, {"per_turn", nlohmann::json::array()}};
  int errors = 0;
  std::printf("%-5s %14s %14s %12s %12s %12s\n", "turn", "prompt tokens", "cached tokens", "TTFT p50 ms",
              "TTFT mean ms", "e2e mean ms");
  for (size_t t = 0; t < T; ++t) {
    std::vector<double> ttft;
    double prompt = 0, cached = 0, e2e = 0;
    int n = 0;
    for (size_t s = 0; s < S; ++s) {
      const Turn& x = turns[s][t];
      if (!x.ok) {
        if (!x.error.empty()) {
          ++errors;
          std::fprintf(stderr, "session %zu turn %zu: %s\n", s, t + 1, x.error.c_str());
        }
        continue;
      }
      ++n;
      ttft.push_back(x.ttft_s * 1e3);
      prompt += static_cast<double>(x.prompt_tokens);
      cached += static_cast<double>(x.cached_tokens);
      e2e += x.e2e_s * 1e3;
    }
    if (n == 0) continue;
    double mean = 0;
    for (double v : ttft) mean += v;
    mean /= n;
    std::printf("%-5zu %14.1f %14.1f %12.2f %12.2f %12.2f\n", t + 1, prompt / n, cached / n, Percentile(ttft, 0.5),
                mean, e2e / n);
    out["per_turn"].push_back({{"turn", t + 1}, {"requests", n}, {"prompt_tokens_mean", prompt / n},
                               {"cached_tokens_mean", cached / n}, {"ttft_ms_p50", Percentile(ttft, 0.5)},
                               {"ttft_ms_mean", mean}, {"e2e_ms_mean", e2e / n}});
  }
  out["errors"] = errors;
  if (!a.json_out.empty()) {
    std::ofstream f(a.json_out);
    f << out.dump(2) << "\n";
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", a.json_out.c_str());
      return 1;
    }
  }
  return errors == 0 ? 0 : 1;
}

}  // namespace specd::client
