// The batcher: one thread owns the SpeculativeEngine and loops — take cancellations and aborts,
// admit queued requests into free slots, run one batched speculative Step(), hand the new tokens
// to each request's sink. Requests join and leave between steps (continuous batching); a
// cancelled or aborted request is released before the next step, so its slot is free within
// one step. No transport here: requests come with a RequestSink (server/request_sink.h), so the
// gRPC service, the HTTP API and the unit tests drive the same code.
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
#include "server/metrics.h"
#include "server/prepared_request.h"
#include "server/request_sink.h"
#include "speculative/engine.h"

namespace specd::serve {

using EngineFactory = std::function<StatusOr<std::unique_ptr<SpeculativeEngine>>()>;

struct BatcherOptions {
  int max_batch = 16;
  int max_queue = 256;
  std::string drafter;  // the served drafters, default first, comma-separated (for logs)
  // Testing only (--debug-fail-step N): step N (1-based) reports a failure instead of running,
  // so that tests can check the recovery path: in-flight requests get INTERNAL, the engine is
  // rebuilt, serving goes on.
  int64_t debug_fail_step = 0;
};

class Batcher {
 public:
  Batcher(EngineFactory factory, const cli::TextCodec* text, Metrics* metrics, BatcherOptions opt);
  ~Batcher();

  // Builds the engine and starts the thread.
  Status Start();

  // From any thread. OK: the batcher took `sink` and will end the request through it.
  // Otherwise `sink` stays with the caller, who reports the returned status (kUnavailable
  // while draining, kResourceExhausted when max_batch + max_queue requests are already in,
  // kAlreadyExists for a request_id that is in flight). An empty request_id is replaced by a
  // server-assigned one (128 random bits).
  Status Submit(PreparedRequest req, std::unique_ptr<RequestSink>& sink);
  // True if a queued or running request had this id; it ends with FINISH_REASON_ABORT.
  bool Abort(const std::string& request_id);
  // Wakes the loop (a call was cancelled).
  void Wake();

  // Shutdown: refuse new requests; later cancel what is left; then stop the thread.
  void BeginDrain();
  void CancelAll(const Status& status);
  bool Idle() const;
  void Stop();

 private:
  // Engines built so far (a rebuilt engine may reuse the freed one's address, so its counters are
  // told apart by this), and the one whose prefix-store counters prefix_seen_ holds.
  uint64_t engine_generation_ = 0, prefix_generation_ = 0;
  PrefixStoreStats prefix_seen_;
  struct Entry {
    PreparedRequest req;
    std::unique_ptr<RequestSink> sink;
    size_t prompt_tokens = 0;
    bool admitted = false;  // left the queue: counts in running_
    int engine_id = -1;
    std::string drafter;  // the drafter that serves it (metrics label)
    size_t sent = 0;  // generated tokens already streamed
    std::unique_ptr<cli::TextStream> text;
    std::chrono::steady_clock::time_point last_chunk;
    bool first_token_sent = false;
    SpeculativeStats last_stats;  // to turn the per-request stats into metric deltas
  };

  std::string NewRequestId();  // under mu_
  void Loop();
  void DropQueued(const std::unordered_set<std::string>& aborts, bool cancel_all);
  void DropActive(const std::unordered_set<std::string>& aborts, bool cancel_all);
  void Admit();
  void RunStep();
  void Emit();
  // The request ends normally: its last tokens, then the outcome. Releases the engine sequence.
  void EndWithOutcome(Entry& e, FinishReason reason, const std::string& stop_string, std::vector<int32_t> ids,
                      std::string text);
  // The request ends with an error status. Releases the engine sequence, if any.
  void EndWithStatus(Entry& e, const Status& st);
  void RecordSpecDelta(Entry& e);
  void Forget(const Entry& e);
  void PublishGauges();

  EngineFactory factory_;
  const cli::TextCodec* text_;
  Metrics* metrics_;
  BatcherOptions opt_;

  std::unique_ptr<SpeculativeEngine> engine_;  // batcher thread only
  std::vector<std::unique_ptr<Entry>> active_;  // batcher thread only

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Entry>> queue_;
  std::unordered_set<std::string> live_ids_;
  std::unordered_set<std::string> aborts_;
  bool draining_ = false, stop_ = false, wake_ = false;
  bool cancel_all_ = false;
  Status cancel_status_;
  int running_ = 0;  // requests out of the queue and not yet ended
  std::random_device random_;  // under mu_: server-assigned request ids
  int64_t steps_ = 0;  // batcher thread only
  std::chrono::steady_clock::time_point last_memory_{};  // memory gauges last published
  bool idle_ = true;  // batcher thread only: nothing running or queued at the last publish
  std::thread thread_;
};

}  // namespace specd::serve
