// specd-client: talks to `specd serve` over gRPC — generate, bench, health, info (DESIGN.md §7).
// Links the generated stubs only, never the engine.
#include <CLI/CLI.hpp>

#include "client/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"specd-client: gRPC client and load generator for specd"};
  app.require_subcommand(1);
  std::string address = "localhost:50051";
  app.add_option("--address", address, "Server HOST:PORT")->capture_default_str();

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
  specd::client::AddSamplingFlags(bench, &ba.sampling, /*full=*/false);
  ba.sampling.o_max_tokens->description("Tokens per request, unless the prompt file says (default 64)");

  std::string service;
  int64_t timeout_ms = 5000;
  auto* health = app.add_subcommand("health", "grpc.health.v1 Check; exit 0 iff SERVING");
  health->add_option("--service", service, "Service name ('' = the whole server)");
  health->add_option("--timeout-ms", timeout_ms)->capture_default_str();
  auto* info = app.add_subcommand("info", "Model and server settings as JSON");
  info->add_option("--timeout-ms", timeout_ms)->capture_default_str();

  CLI11_PARSE(app, argc, argv);
  if (*gen) {
    ga.address = address;
    return specd::client::RunGenerate(ga);
  }
  if (*bench) {
    ba.address = address;
    return specd::client::RunBench(ba);
  }
  if (*health) return specd::client::RunHealth(address, service, timeout_ms);
  if (*info) return specd::client::RunInfo(address, timeout_ms);
  return 2;
}
