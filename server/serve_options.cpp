#include "server/serve_options.h"

#include <algorithm>
#include <fstream>
#include <iterator>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

namespace specd::serve {
namespace {

bool Scalar(const std::string& key, const nlohmann::json& v, std::vector<std::string>* out, std::string* error) {
  if (v.is_boolean()) {  // a true boolean is a bare flag; false leaves it out
    if (v.get<bool>()) out->push_back("--" + key);
    return true;
  }
  out->push_back("--" + key);
  if (v.is_string()) {
    out->push_back(v.get<std::string>());
  } else if (v.is_number()) {
    out->push_back(v.dump());
  } else {
    *error = "config file: key '" + key + "' must be a string, number or boolean";
    return false;
  }
  return true;
}

}  // namespace

void AddServeFlags(CLI::App* s, ServeOptions* o) {
  // The config file's values come first on the command line; the user's flags, later, win.
  s->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  s->add_option("--model", o->model,
                 "Target model folder, or random:NAME[:SEED] for random weights of a released shape "
                 "(0.8B, 2B, 4B, 9B, 27B: benchmarks and soaks) (default: the embedded demo pair)");
  s->add_option("--draft", o->draft, "Draft model folder or random:NAME[:SEED] (implies --drafter draft)");
  s->add_option("--drafter", o->drafter,
                "none | ngram | draft | mtp (the checkpoint's own MTP head, checked at startup), or several served side "
                "by side, comma-separated (e.g. mtp,draft,ngram): the first is the default, a request may name any or none");
  s->add_option("--mtp-vocab", o->mtp_vocab,
                "With --drafter mtp: a reduced draft vocabulary (JSON {\"ids\": [...]}, `specd draft-vocab`); the head "
                "drafts only those tokens, verification still uses all");
  s->add_option("--tokenizer", o->tokenizer, "tokenizer.json or folder; 'none' = token ids only");
  s->add_option("--quantize", o->quantize,
                "none | fp8: quantize the target's projections (and its MTP head's) to block-wise FP8 at load, "
                "128x128 blocks as Qwen's FP8 checkpoints; FP8 checkpoints load as FP8 without it (docs/fp8.md)")
      ->check(CLI::IsMember({"none", "fp8"}));
  s->add_option("--k", o->k, "Default drafts per step")->check(CLI::Range(0, 16));
  s->add_option("--max-k", o->max_k, "Largest k a request may ask for")->check(CLI::Range(0, 16));
  s->add_option("--host", o->host, "Address to listen on");
  s->add_option("--port", o->port, "gRPC port (0 = any free port)")->check(CLI::Range(0, 65535));
  s->add_option("--metrics-port", o->metrics_port, "Prometheus /metrics port (0 = off)")->check(CLI::Range(0, 65535));
  s->add_option("--http-port", o->http_port,
                "OpenAI-compatible HTTP API port (/v1/chat/completions, /v1/completions, /v1/models, /health); "
                "-1 = off, 0 = any free port")
      ->check(CLI::Range(-1, 65535));
  s->add_option("--served-model-name", o->served_model_name,
                "The model's name on the HTTP API (default: the model folder's name)");
  s->add_option("--device", o->device, "cpu or cuda");
  s->add_option("--max-batch", o->max_batch, "Sequences decoded together (cache slots)")->check(CLI::Range(1, 4096));
  s->add_option("--max-queue", o->max_queue, "Requests waiting for a slot before RESOURCE_EXHAUSTED")
      ->check(CLI::Range(0, 1 << 20));
  s->add_option("--max-context", o->max_context, "Tokens per sequence (0 = the model's maximum)")
      ->check(CLI::NonNegativeNumber);
  s->add_option("--prefill-chunk", o->prefill_chunk, "Prompt tokens per sequence per step")
      ->check(CLI::PositiveNumber);
  s->add_option("--max-prefill-tokens", o->max_prefill_tokens, "Prompt tokens per step, all requests together")
      ->check(CLI::PositiveNumber);
  s->add_option("--kv-cache-tokens", o->kv_cache_tokens,
                 "KV rows of the target's paged cache, all requests together (0 = max-batch x max-context); "
                 "requests wait in the queue until their rows fit")
      ->check(CLI::NonNegativeNumber);
  s->add_option("--gpu-memory-fraction", o->gpu_memory_fraction,
                "CUDA: the share of the device's memory the daemon plans for (weights, caches, KV pool, workspaces; "
                "other processes' use counts against it); the KV pool gets what is left, and a configuration that "
                "cannot fit stops at startup with the plan (docs/memory.md)")
      ->check(CLI::Range(0.01, 1.0));
  s->add_option("--prefix-cache", o->prefix_cache,
                "on: reuse the target's state after prompt prefixes seen before (chat turns, shared system prompts; "
                "exact: the same ids as uncached; with every drafter, the MTP head's own state included)")
      ->check(CLI::IsMember({"on", "off"}));
  s->add_option("--prefix-cache-bytes", o->prefix_cache_bytes,
                "Prefix cache: one memory budget for its states and KV rows, e.g. 4G (0 = --prefix-cache-entries and "
                "--prefix-cache-tokens as given; with it, --prefix-cache-entries is the most entries it keeps)")
      ->transform(CLI::AsSizeValue(false));
  s->add_option("--prefix-cache-entries", o->prefix_cache_entries,
                "Prefix cache: states kept (each holds every GDN layer's state: its size is logged at startup); "
                "with --prefix-cache-bytes, the most it keeps")
      ->check(CLI::Range(1, 1 << 16))
      ->each([o](const std::string&) { o->prefix_cache_entries_given = true; });
  s->add_option("--prefix-cache-tokens", o->prefix_cache_tokens,
                "Prefix cache: KV rows it may hold beside the requests' (0 = 4 x max-context)")
      ->check(CLI::NonNegativeNumber);
  s->add_flag("--batch-invariant", o->batch_invariant,
              "CUDA: a token's logits do not depend on how many rows share a forward, up to 64 (batched "
              "verify then runs at about a third of the speed)");
  s->add_option("--grace-seconds", o->grace_seconds, "On SIGTERM: time to finish in-flight requests")
      ->check(CLI::NonNegativeNumber);
  s->add_option("--port-file", o->port_file, "Write {\"port\",\"metrics_port\",\"http_port\"} here once serving");
  s->add_option("--log-level", o->log_level, "trace | debug | info | warn | error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  s->add_option("--tls-cert", o->tls_cert, "PEM certificate (chain): serve gRPC over TLS (with --tls-key)");
  s->add_option("--tls-key", o->tls_key, "PEM private key of --tls-cert");
  s->add_option("--api-key-file", o->api_key_file,
                "File whose first line is the API key: every RPC must send `authorization: Bearer KEY`");
  s->add_option("--max-message-bytes", o->max_message_bytes, "Largest request message accepted")
      ->check(CLI::Range(int64_t{1024}, int64_t{1} << 30));
  s->add_option("--max-concurrent-streams", o->max_concurrent_streams, "Streams one HTTP/2 connection may open")
      ->check(CLI::Range(1, 1 << 20));
  s->add_option("--keepalive-seconds", o->keepalive_seconds, "Ping idle connections this often (0 = off)")
      ->check(CLI::Range(0, 86400));
  s->add_option("--cuda-graph-limit", o->cuda_graph_limit,
                 "CUDA graphs kept at most, least recently used dropped first (0 = no graphs)")
      ->check(CLI::Range(0, 4096));
  s->add_option("--cuda-graph-capture-after", o->cuda_graph_capture_after,
                "Times a batch shape is seen before its graph is captured (1 = at once)")
      ->check(CLI::Range(1, 1000));
  s->add_option("--debug-fail-alloc", o->debug_fail_alloc,
                "Testing only: backend allocation N (counted from when serving starts) fails as if memory ran out");
  s->add_option("--debug-device-memory", o->debug_device_memory,
                "Testing only: plan memory as if the backend were a device of this many bytes, nothing else on it")
      ->group("")
      ->transform(CLI::AsSizeValue(false));
  s->add_option("--debug-fail-step", o->debug_fail_step, "Testing only: make step N fail")
      ->group("")  // hidden from --help
      ->check(CLI::NonNegativeNumber);
  // Read by ExpandServeConfig before parsing; declared here for --help and so that it parses.
  s->add_option("--config", o->config, "JSON object with the flags' names as keys (\"max-batch\" or \"max_batch\")");
}

bool ExpandServeConfig(const std::vector<std::string>& argv, std::vector<std::string>* out, std::string* error) {
  *out = argv;
  size_t serve = 0;
  for (size_t i = 1; i < argv.size() && serve == 0; ++i) {
    if (argv[i] == "serve") serve = i;
  }
  if (serve == 0) return true;
  std::string path;
  for (size_t i = serve + 1; i < argv.size(); ++i) {
    if (argv[i] == "--config" && i + 1 < argv.size()) path = argv[i + 1];
    if (argv[i].rfind("--config=", 0) == 0) path = argv[i].substr(9);
  }
  if (path.empty()) return true;
  std::ifstream in(path);
  if (!in) {
    *error = "cannot read config file " + path;
    return false;
  }
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    *error = "config file " + path + ": expected one JSON object of flag names to values";
    return false;
  }
  std::vector<std::string> flags;
  for (const auto& [raw_key, value] : j.items()) {
    std::string key = raw_key;
    std::replace(key.begin(), key.end(), '_', '-');
    if (key == "config") {
      *error = "config file " + path + ": 'config' cannot be nested";
      return false;
    }
    if (value.is_array()) {
      for (const auto& v : value) {
        if (!Scalar(key, v, &flags, error)) return false;
      }
    } else if (!Scalar(key, value, &flags, error)) {
      return false;
    }
  }
  out->insert(out->begin() + static_cast<std::ptrdiff_t>(serve) + 1, flags.begin(), flags.end());
  return true;
}

}  // namespace specd::serve
