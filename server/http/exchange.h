// One HTTP request in flight: where the batcher thread (through HttpSink) leaves a request's
// text and its end, and where the HTTP worker thread that holds the client's connection picks
// them up. The worker formats them (server-sent events or one JSON body); the batcher never
// waits on a client.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "server/request_sink.h"

namespace specd::serve::http {

class Exchange {
 public:
  using Clock = std::chrono::steady_clock;
  // `wake` tells the batcher to look at Cancelled() now (Batcher::Wake).
  explicit Exchange(std::function<void()> wake) : wake_(std::move(wake)), arrival_(Clock::now()) {}

  // ---- batcher side (HttpSink) ----
  void Push(std::string_view text, size_t tokens);
  void Finish(std::string_view text, size_t tokens, const RequestOutcome& outcome);
  void Fail(const Status& status);
  std::optional<Status> Cancelled() const;
  Clock::time_point arrival() const { return arrival_; }

  // ---- worker side ----
  struct Taken {
    std::string text;  // text since the last Take
    size_t tokens = 0;
    bool ended = false;
    std::optional<RequestOutcome> outcome;  // ended normally
    std::optional<Status> failure;          // ended with an error
  };
  // Waits up to `timeout` for new text or the end.
  Taken Take(std::chrono::milliseconds timeout);
  // The client went away (a failed write, a closed connection): the request is cancelled at
  // the batcher's next look, which `wake` makes immediate.
  void ClientGone();

 private:
  std::function<void()> wake_;
  const Clock::time_point arrival_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string text_;
  size_t tokens_ = 0;
  bool ended_ = false, taken_end_ = false, client_gone_ = false;
  std::optional<RequestOutcome> outcome_;
  std::optional<Status> failure_;
};

// The RequestSink the batcher holds for an HTTP request.
class HttpSink final : public RequestSink {
 public:
  explicit HttpSink(std::shared_ptr<Exchange> ex) : ex_(std::move(ex)) {}
  void OnTokens(const std::string&, std::span<const int32_t> ids, std::string text) override {
    ex_->Push(text, ids.size());
  }
  void OnFinished(std::span<const int32_t> ids, std::string text, const RequestOutcome& outcome) override {
    ex_->Finish(text, ids.size(), outcome);
  }
  void OnFailed(const Status& status) override { ex_->Fail(status); }
  std::optional<Status> Cancelled() const override { return ex_->Cancelled(); }
  Clock::time_point arrival() const override { return ex_->arrival(); }

 private:
  std::shared_ptr<Exchange> ex_;
};

}  // namespace specd::serve::http
