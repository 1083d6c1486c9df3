// specd-client: talks to `specd serve` over gRPC — generate, bench, soak, health, info (docs/server.md).
// Links the generated stubs only, never the engine.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "client/commands.h"
#include "client/common.h"

int main(int argc, char** argv) {
  CLI::App app{"specd-client: gRPC client and load generator for specd"};
  app.require_subcommand(1);
  std::string address = "localhost:50051";
  app.add_option("--address", address, "Server HOST:PORT")->capture_default_str();
  std::string tls_ca, api_key_file;
  app.add_option("--tls-ca", tls_ca, "Connect over TLS, trusting this CA's PEM ('system': the system's roots)");
  app.add_option("--api-key-file", api_key_file, "Send the key on this file's first line as `authorization: Bearer`");

  specd::client::GenerateArgs ga;
  auto* gen = app.add_subcommand("generate", "Stream one generation (text to stdout, or --json)");
  auto* p_text = gen->add_option("--prompt", ga.prompt, "Prompt text (the server needs a tokenizer)");
  auto* p_ids = gen->add_option("--prompt-ids", ga.prompt_ids, "Prompt token ids, comma-separated");
  auto* p_chat = gen->add_option("--chat-json", ga.chat_json, "Chat messages: JSON list of {role, content}");
  p_text->excludes(p_ids)->excludes(p_chat);
  p_ids->excludes(p_chat);
  specd::client::AddSamplingFlags(gen, &ga.sampling, /*full=*/true);
  gen->add_option("--request-id", ga.request_id, "Id for Abort (default: the server assigns one)");
  gen->add_option("--timeout-ms", ga.timeout_ms, "Deadline for the whole request (0 = none)");
  gen->add_flag("--json", ga.json, "Print one JSON object, the shape of `specd generate --json`");

  specd::client::BenchArgs ba;
  auto* bench = app.add_subcommand("bench", "Load test: latency, throughput and acceptance");
  bench->add_option("--prompts", ba.prompts, "JSONL: {\"prompt\": ...} or {\"prompt_ids\": [...]}, optional max_tokens");
  bench->add_option("--num-requests", ba.num_requests, "Measured requests")->capture_default_str();
  bench->add_option("--concurrency", ba.concurrency, "Requests in flight")->capture_default_str();
  bench->add_option("--request-rate", ba.request_rate, "Poisson arrivals per second (0 = no pacing)");
  bench->add_option("--warmup", ba.warmup, "Unmeasured requests first")->capture_default_str();
  bench->add_option("--timeout-ms", ba.timeout_ms, "Deadline per request (0 = none)");
  bench->add_option("--json-out", ba.json_out, "Write the summary JSON here");
  bench->add_option("--multi-turn", ba.multi_turn,
                    "Chat sessions of N turns instead: each turn sends the previous prompt + reply + a new user "
                    "message (token ids); TTFT and prefix-cache reuse per turn");
  bench->add_option("--sessions", ba.sessions, "With --multi-turn: sessions side by side")->capture_default_str();
  bench->add_option("--system-tokens", ba.system_tokens, "With --multi-turn: the shared system prompt's tokens")
      ->capture_default_str();
  bench->add_option("--turn-tokens", ba.turn_tokens, "With --multi-turn: tokens of each user message")
      ->capture_default_str();
  specd::client::AddSamplingFlags(bench, &ba.sampling, /*full=*/false);
  ba.sampling.o_max_tokens->description("Tokens per request, unless the prompt file says (default 64)");

  specd::client::SoakArgs sa;
  auto* soak = app.add_subcommand("soak", "Soak test: rounds of varied requests; memory, errors, lost streams, control ids");
  soak->add_option("--rounds", sa.rounds, "Rounds (the first is warm-up; the last two are compared)")->capture_default_str();
  soak->add_option("--requests-per-round", sa.requests_per_round)->capture_default_str();
  soak->add_option("--concurrency-levels", sa.concurrency_levels,
                   "Each round runs its requests split over these levels in turn")->capture_default_str();
  soak->add_option("--metrics-address", sa.metrics_address, "HOST:PORT of the server's /metrics (load and memory gauges)");
  soak->add_option("--server-pid", sa.server_pid, "Server pid: RSS from /proc when /metrics has no RSS gauge");
  soak->add_option("--seed", sa.seed)->capture_default_str();
  soak->add_option("--min-prompt-tokens", sa.min_prompt_tokens)->capture_default_str();
  soak->add_option("--max-prompt-tokens", sa.max_prompt_tokens)->capture_default_str();
  soak->add_option("--max-tokens-range", sa.max_tokens_range, "LO,HI")->capture_default_str();
  soak->add_option("--k-range", sa.k_range, "LO,HI (clamped to the server's max_k)")->capture_default_str();
  soak->add_option("--drafters", sa.drafters, "Per-request drafters to send (those the server accepts)")->capture_default_str();
  soak->add_option("--cancel-fraction", sa.cancel_fraction, "Requests cancelled by the client")->capture_default_str();
  soak->add_option("--shared-prefix-fraction", sa.shared_prefix_fraction,
                   "Requests whose prompt starts with one of four fixed prompts (prefix-cache traffic)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  soak->add_option("--shared-prefix-tokens", sa.shared_prefix_tokens, "Length of those fixed prompts")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  soak->add_option("--deadline-fraction", sa.deadline_fraction, "Requests with a 5-200 ms deadline")->capture_default_str();
  soak->add_option("--memory-growth-pct", sa.memory_growth_pct, "Largest memory growth between the last two rounds")
      ->capture_default_str();
  soak->add_flag("--no-rss-check", sa.no_rss_check,
                 "Report the RSS criterion as not checked (sanitizer builds: ASan's quarantine grows RSS by design)");
  soak->add_option("--rss-growth-pct", sa.rss_growth_pct, "The same for the server's RSS (default: --memory-growth-pct)");
  soak->add_option("--request-timeout-s", sa.request_timeout_s, "A request not back by then is lost")->capture_default_str();
  soak->add_option("--settle-s", sa.settle_s, "Time for the load gauges to reach 0 after a round")->capture_default_str();
  soak->add_option("--json-out", sa.json_out, "Write the rounds, control ids and criteria as JSON");
  soak->add_flag("--debug-perturb-control", sa.debug_perturb_control,
                 "Testing: change the after-control's prompt so the control check fails")
      ->group("");

  std::string service;
  int64_t timeout_ms = 5000;
  auto* health = app.add_subcommand("health", "grpc.health.v1 Check; exit 0 iff SERVING");
  health->add_option("--service", service, "Service name ('' = the whole server)");
  health->add_option("--timeout-ms", timeout_ms)->capture_default_str();
  auto* info = app.add_subcommand("info", "Model and server settings as JSON");
  info->add_option("--timeout-ms", timeout_ms)->capture_default_str();

  CLI11_PARSE(app, argc, argv);
  std::string conn_error;
  if (!specd::client::SetConnectionOptions(tls_ca, api_key_file, &conn_error)) {
    std::fprintf(stderr, "specd-client: %s\n", conn_error.c_str());
    return 2;
  }
  if (*gen) {
    ga.address = address;
    return specd::client::RunGenerate(ga);
  }
  if (*bench) {
    ba.address = address;
    return ba.multi_turn > 0 ? specd::client::RunMultiTurnBench(ba) : specd::client::RunBench(ba);
  }
  if (*soak) {
    sa.address = address;
    return specd::client::RunSoak(sa);
  }
  if (*health) return specd::client::RunHealth(address, service, timeout_ms);
  if (*info) return specd::client::RunInfo(address, timeout_ms);
  return 2;
}
