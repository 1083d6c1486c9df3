// `specd serve` settings: the flags, and the same keys in an optional JSON config file
// (--config FILE; flags given on the command line win over the file).
//
// The file is applied by rewriting the command line before CLI11 sees it: its keys become
// flags placed right after `serve`, and every serve option keeps its last value. So the file
// gets exactly the flags' validation, and an unknown key is an error naming it. (CLI11 2.1
// does not read config files for subcommands.)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace specd::serve {

struct ServeOptions {
  std::string model;      // target model folder; empty = the embedded default pair
  std::string draft;      // draft model folder (implies drafter "draft")
  // none | ngram | draft | mtp, or a comma-separated list of the last three (the first is the
  // default; requests may choose); empty = draft when a draft model is known, else ngram.
  std::string drafter;
  std::string mtp_vocab;  // a reduced draft vocabulary for the MTP head (speculative/draft_vocab.h)
  std::string tokenizer;  // "" = the model folder's tokenizer.json, "none", or a file/folder
  std::string device = "cpu";
  std::string quantize = "none";  // none | fp8: the target's projections rounded to block-wise FP8 at load
  std::string host = "0.0.0.0";
  int port = 50051;          // 0 = any free port (see port_file)
  int metrics_port = 9400;   // 0 = no metrics endpoint
  int http_port = -1;        // OpenAI-compatible HTTP API: -1 = off, 0 = any free port
  std::string served_model_name;  // the model's name on the HTTP API; empty = the model folder's name
  int k = 4;                 // default drafts per step
  int max_k = 16;            // largest k a request may ask for (sizes the verify log)
  int max_batch = 16;        // sequences in the engine at once (cache slots)
  int max_queue = 256;       // requests waiting for a slot; more -> RESOURCE_EXHAUSTED
  int64_t max_context = 0;   // tokens per sequence; 0 = the model's max_position_embeddings
  int64_t prefill_chunk = 512;
  int64_t max_prefill_tokens = 2048;
  int64_t kv_cache_tokens = 0;  // 0: max_batch x max_context, or what the memory budget leaves
  double gpu_memory_fraction = 0.9;  // of the device's memory, for everything the plan counts
  int64_t debug_device_memory = 0;   // testing only: budget as if the backend had a device this large
  // Prefix cache (docs/prefix-cache.md): off until it is checked on the GPU and with the MTP head.
  std::string prefix_cache = "on";   // on | off
  int64_t prefix_cache_bytes = 0;    // one budget for the whole cache (0: entries and tokens as given)
  bool prefix_cache_entries_given = false;  // --prefix-cache-entries was set (with a budget: a cap)
  int prefix_cache_entries = 64;     // GDN snapshots kept
  int64_t prefix_cache_tokens = 0;   // KV rows the cache may hold beside the requests' (0: 4 x max-context)
  bool batch_invariant = false;  // CUDA: projections of 17-64 rows on the row-invariant form
  double grace_seconds = 30;  // SIGTERM: time for in-flight requests before they are cancelled
  std::string port_file;     // written once serving: {"port": P, "metrics_port": M}
  std::string log_level = "info";
  std::string config;  // applied by ExpandServeConfig before parsing; kept for --help
  int64_t debug_fail_step = 0;  // testing only: see SchedulerOptions::debug_fail_step
  // Security (docs/server.md, threat model): TLS and an API key are both optional.
  std::string tls_cert, tls_key;  // PEM files: serve gRPC over TLS
  std::string api_key_file;       // a file whose first line is the key every RPC must present
  int64_t max_message_bytes = 4 << 20;  // largest request message (gRPC's default: 4 MiB)
  int max_concurrent_streams = 256;     // per HTTP/2 connection
  int keepalive_seconds = 60;           // server pings an idle connection this often (0 = never)
  int64_t debug_fail_alloc = 0;  // testing only: backend allocation N (from serving on) fails
  int cuda_graph_limit = 128;    // CUDA graphs kept at most (0 = none)
  int cuda_graph_capture_after = 2;  // sightings of a batch shape before it is captured
};

// Registers the flags (and --config) on the `serve` subcommand.
void AddServeFlags(CLI::App* serve, ServeOptions* o);

// argv with the `serve --config FILE` keys spliced in as flags; false + *error when the file
// cannot be read or is not a flat JSON object of strings, numbers, booleans or lists of them.
bool ExpandServeConfig(const std::vector<std::string>& argv, std::vector<std::string>* out, std::string* error);

}  // namespace specd::serve
