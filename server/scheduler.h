// The scheduler: one thread owns the SpecEngine and loops — take cancellations and aborts, admit
// queued requests into free slots, run one batched speculative Step(), stream the new tokens.
// Requests join and leave between steps (continuous batching); a cancelled or aborted request
// is released before the next step, so its slot is free within one step.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "server/cli_text.h"
#include "server/generate_call.h"
#include "server/metrics.h"
#include "server/validate.h"
#include "spec/engine.h"

namespace specd::serve {

using EngineFactory = std::function<StatusOr<std::unique_ptr<SpecEngine>>()>;

struct SchedulerOptions {
  int max_batch = 16;
  int max_queue = 256;
  std::string drafter;  // for logs
  // Testing only (--debug-fail-step N): step N (1-based) reports a failure instead of running,
  // so that tests can check the recovery path: in-flight requests get INTERNAL, the engine is
  // rebuilt, serving goes on.
  int64_t debug_fail_step = 0;
};

class Scheduler {
 public:
  Scheduler(EngineFactory factory, const cli::TextCodec* text, Metrics* metrics, SchedulerOptions opt);
  ~Scheduler();

  // Builds the engine and starts the thread.
  Status Start();

  // From gRPC threads. OK: the scheduler took `call` and will close it. Otherwise the
  // caller closes it with the returned status (UNAVAILABLE while draining, RESOURCE_EXHAUSTED
  // when max_batch + max_queue requests are already in, ALREADY_EXISTS for a request_id that
  // is in flight). An empty request_id is replaced by a server-assigned one.
  grpc::Status Submit(PreparedRequest req, CallRef& call);
  // True if a queued or running request had this id; it ends with FINISH_REASON_ABORT.
  bool Abort(const std::string& request_id);
  // Wakes the loop (a call was cancelled).
  void Wake();

  // Shutdown: refuse new requests; later cancel what is left; then stop the thread.
  void BeginDrain();
  void CancelAll(const grpc::Status& status);
  bool Idle() const;
  void Stop();

 private:
  struct Entry {
    PreparedRequest req;
    CallRef call;
    size_t prompt_tokens = 0;
    bool admitted = false;  // left the queue: counts in running_
    int engine_id = -1;
    size_t sent = 0;  // generated tokens already streamed
    std::unique_ptr<cli::TextStream> text;
    std::chrono::steady_clock::time_point last_chunk;
    bool first_token_sent = false;
    SpecStats last_stats;  // to turn the per-request stats into metric deltas
  };

  std::string NewRequestId();  // under mu_
  void Loop();
  void DropQueued(const std::unordered_set<std::string>& aborts, bool cancel_all);
  void DropActive(const std::unordered_set<std::string>& aborts, bool cancel_all);
  void Admit();
  void RunStep();
  void Emit();
  // The request ends with a final message (its last tokens, finish reason, usage, stats) and OK.
  // Releases the engine sequence.
  void EndWithMessage(Entry& e, v1::FinishReason reason, const std::string& stop_string,
                      v1::GenerateResponse last);
  // The request ends with an error status. Releases the engine sequence, if any.
  void EndWithStatus(Entry& e, const grpc::Status& st);
  void RecordSpecDelta(Entry& e);
  void Forget(const Entry& e);
  void PublishGauges();

  EngineFactory factory_;
  const cli::TextCodec* text_;
  Metrics* metrics_;
  SchedulerOptions opt_;

  std::unique_ptr<SpecEngine> engine_;  // scheduler thread only
  std::vector<std::unique_ptr<Entry>> active_;  // scheduler thread only

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Entry>> queue_;
  std::unordered_set<std::string> live_ids_;
  std::unordered_set<std::string> aborts_;
  bool draining_ = false, stop_ = false, wake_ = false;
  bool cancel_all_ = false;
  grpc::Status cancel_status_;
  int running_ = 0;  // requests out of the queue and not yet ended
  std::random_device random_;  // under mu_: server-assigned request ids
  int64_t steps_ = 0;  // scheduler thread only
  std::chrono::steady_clock::time_point last_memory_{};  // memory gauges last published
  bool idle_ = true;  // scheduler thread only: nothing running or queued at the last publish
  std::thread thread_;
};

}  // namespace specd::serve
