// Integration-test harness: the real `specd serve` as a subprocess on an ephemeral loopback
// port, the generated C++ stub to talk to it, /metrics over HTTP, the fixture references, and
// `specd-client` as a subprocess.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "specd/v1/specd.grpc.pb.h"

namespace specd::itest {

std::string FixtureDir(const std::string& rel);  // under tests/fixtures/qwen35-tiny
// A checkpoint folder (in a fresh temp dir) with an MTP head: the fixture model `base` ("dense" or
// "moe") with mtp_num_hidden_layers = 1 and its head's tensors (`<base>_mtp/mtp.safetensors`),
// joined by a model.safetensors.index.json as sharded checkpoints are.
std::string MtpCheckpointDir(const std::string& base);
// An int64 tensor of a fixture's refs.safetensors, as int32 ids.
std::vector<int32_t> FixtureIds(const std::string& refs_rel, const std::string& tensor);

class Server {
 public:
  // Starts `specd serve ARGS --host 127.0.0.1 --port 0 --metrics-port <free> --port-file ...`
  // and waits until it serves (port file written). Fails the test (ADD_FAILURE) and returns
  // null when it does not come up.
  static std::unique_ptr<Server> Start(std::vector<std::string> args);
  ~Server();

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  pid_t pid() const { return pid_; }
  std::unique_ptr<v1::Specd::Stub> Stub() const;
  v1::ModelInfo Info() const;  // GetModelInfo (fails the test when the call does)

  std::string Metrics() const;                          // GET /metrics ("" on failure)
  double Metric(const std::string& series) const;       // e.g. `specd:cache_slots_in_use`; -1 if absent
  // Polls until Metric(series) == value or the timeout passes; returns the last value seen.
  double WaitMetric(const std::string& series, double value, std::chrono::milliseconds timeout) const;

  void Signal(int sig) const;
  // Waits for the process to exit; returns its exit code (128+signal if killed, -1 on timeout).
  int Wait(std::chrono::milliseconds timeout);
  std::string Log() const;  // the server's stdout + stderr so far

 private:
  Server() = default;
  static std::unique_ptr<Server> TryStart(std::vector<std::string> args, bool* port_taken);
  pid_t pid_ = -1;
  int port_ = 0, metrics_port_ = 0;
  std::string dir_;
  bool exited_ = false;
};

// A whole Generate stream read to the end.
struct StreamResult {
  grpc::Status status;
  std::vector<int32_t> ids;
  std::string text;
  int messages = 0;
  bool has_final = false;
  v1::GenerateResponse final_msg;
};
StreamResult Generate(v1::Specd::Stub& stub, const v1::GenerateRequest& req, int64_t timeout_ms = 60000);

// A token-id request with greedy defaults.
v1::GenerateRequest IdsRequest(const std::vector<int32_t>& prompt, uint32_t max_tokens, bool ignore_eos = true);

struct CommandResult {
  int exit_code = -1;
  std::string out, err;
};
// Runs a binary with arguments (no shell), capturing stdout and stderr; killed after 60 s.
CommandResult RunCommand(const std::string& binary, const std::vector<std::string>& args);

std::string SpecdBinary();
std::string ClientBinary();

}  // namespace specd::itest
