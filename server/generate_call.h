// One Generate stream on the gRPC callback API. The scheduler thread produces its messages; the
// reactor writes them one at a time (gRPC allows one outstanding write), merging whatever
// arrives while a write is in flight into the next message, so a slow reader costs memory
// proportional to its unread tokens, never a blocked scheduler.
//
// Lifetime: reference counted. gRPC holds one reference until OnDone; the scheduler (or the
// service, before handing the call over) holds the other through a CallRef. Whoever drops the
// last one deletes the object, so neither side can touch a deleted reactor. No lock is held
// while calling into gRPC, because gRPC may run OnWriteDone/OnDone inline from StartWrite/Finish.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <string>

#include <grpcpp/grpcpp.h>

#include "specd/v1/specd.grpc.pb.h"

namespace specd::serve {

class GenerateCall final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  // `on_cancel` runs on a gRPC thread when the client cancels or the deadline passes (it wakes
  // the scheduler).
  GenerateCall(grpc::CallbackServerContext* ctx, std::function<void()> on_cancel);

  // Thread-safe. Appends a delta (token ids, text, and on the last message the final fields).
  void Write(const v1::GenerateResponse& delta);
  // Thread-safe; once. An OK status sends what is pending first; an error drops it.
  void Close(const grpc::Status& status);
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }
  // DEADLINE_EXCEEDED when the deadline has passed, else CANCELLED.
  grpc::Status CancelStatus() const;
  std::chrono::steady_clock::time_point arrival() const { return arrival_; }

  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref();

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  ~GenerateCall() override = default;
  static void Merge(v1::GenerateResponse& into, const v1::GenerateResponse& delta);
  static bool Empty(const v1::GenerateResponse& m);
  // pending_ -> writing_ (serialized: the service is registered raw), pending_ cleared. Under mu_.
  void TakePending();

  grpc::CallbackServerContext* ctx_;
  std::function<void()> on_cancel_;
  const std::chrono::steady_clock::time_point arrival_;
  std::atomic<int> refs_{2};
  std::atomic<bool> cancelled_{false};

  std::mutex mu_;
  v1::GenerateResponse pending_;  // merged deltas not yet handed to gRPC
  grpc::ByteBuffer writing_;  // the message gRPC is writing, serialized (untouched until OnWriteDone)
  bool write_in_flight_ = false;
  bool broken_ = false;        // a write failed: the client is gone
  bool close_requested_ = false;
  bool finish_called_ = false;
  grpc::Status status_;
};

// Owns one reference to a GenerateCall.
class CallRef {
 public:
  CallRef() = default;
  explicit CallRef(GenerateCall* c) : c_(c) {}
  CallRef(CallRef&& o) noexcept : c_(o.c_) { o.c_ = nullptr; }
  CallRef& operator=(CallRef&& o) noexcept {
    if (this != &o) {
      reset();
      c_ = o.c_;
      o.c_ = nullptr;
    }
    return *this;
  }
  CallRef(const CallRef&) = delete;
  CallRef& operator=(const CallRef&) = delete;
  ~CallRef() { reset(); }
  void reset() {
    if (c_) c_->Unref();
    c_ = nullptr;
  }
  GenerateCall* operator->() const { return c_; }
  GenerateCall* get() const { return c_; }
  explicit operator bool() const { return c_ != nullptr; }

 private:
  GenerateCall* c_ = nullptr;
};

}  // namespace specd::serve
