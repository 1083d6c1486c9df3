// What the batcher needs from whoever carries a request to a client: the gRPC stream today
// (server/grpc_sink.h), the HTTP API next, a fake in the batcher's unit tests. The batcher
// never sees a transport.
//
// Contract: the batcher calls OnTokens / OnFinished / OnFailed on its own thread, in order;
// exactly one of OnFinished and OnFailed ends the request, after which the batcher destroys the
// sink. Cancelled() and arrival() may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "speculative/engine.h"
#include "util/status.h"

namespace specd::serve {

// How a request that ran to its end ended (OnFinished).
struct RequestOutcome {
  std::string request_id;
  FinishReason reason = FinishReason::kNone;
  std::string stop_string;  // the stop string that ended it (reason kStop from a string)
  size_t prompt_tokens = 0;
  size_t cached_prompt_tokens = 0;  // of prompt_tokens, restored from the prefix cache
  size_t completion_tokens = 0;  // tokens sent to the client, the last message's included
  SpeculativeStats stats;
};

class RequestSink {
 public:
  using Clock = std::chrono::steady_clock;
  virtual ~RequestSink() = default;

  // New tokens of a running request (never empty) and the text they completed (may be empty:
  // a partial UTF-8 character or a possible stop string is held back).
  virtual void OnTokens(const std::string& request_id, std::span<const int32_t> ids, std::string text) = 0;
  // The end: the last tokens (possibly none) and text, then how it ended.
  virtual void OnFinished(std::span<const int32_t> ids, std::string text, const RequestOutcome& outcome) = 0;
  // The end with an error (cancelled, deadline, engine failure, shutdown, ...).
  virtual void OnFailed(const Status& status) = 0;

  // Set once the client is gone or its deadline passed: kCancelled or kDeadlineExceeded. The
  // batcher polls it between steps; the transport calls Batcher::Wake so that it looks at once.
  virtual std::optional<Status> Cancelled() const = 0;
  // When the request arrived (time to first token and end-to-end latency start here).
  virtual Clock::time_point arrival() const = 0;
};

}  // namespace specd::serve
