#include "server/generate_call.h"

namespace specd::serve {

GenerateCall::GenerateCall(grpc::CallbackServerContext* ctx, std::function<void()> on_cancel)
    : ctx_(ctx), on_cancel_(std::move(on_cancel)), arrival_(std::chrono::steady_clock::now()) {}

void GenerateCall::Unref() {
  if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
}

bool GenerateCall::Empty(const v1::GenerateResponse& m) {
  return m.token_ids_size() == 0 && m.text().empty() && m.reasoning_text().empty() && m.tool_calls_size() == 0 &&
         m.finish_reason() == v1::FINISH_REASON_UNSPECIFIED && m.request_id().empty();
}

void GenerateCall::Merge(v1::GenerateResponse& into, const v1::GenerateResponse& d) {
  if (!d.request_id().empty()) into.set_request_id(d.request_id());
  into.mutable_token_ids()->Add(d.token_ids().begin(), d.token_ids().end());
  into.mutable_text()->append(d.text());
  into.mutable_reasoning_text()->append(d.reasoning_text());
  into.mutable_tool_calls()->MergeFrom(d.tool_calls());
  if (d.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
    into.set_finish_reason(d.finish_reason());
    *into.mutable_usage() = d.usage();
    *into.mutable_stats() = d.stats();
    into.set_stop_string(d.stop_string());
  }
}

void GenerateCall::TakePending() {
  bool own = false;
  writing_.Clear();
  (void)grpc::SerializationTraits<v1::GenerateResponse>::Serialize(pending_, &writing_, &own);
  pending_.Clear();
}

void GenerateCall::Write(const v1::GenerateResponse& delta) {
  {
    std::lock_guard lk(mu_);
    if (close_requested_ || broken_) return;
    Merge(pending_, delta);
    if (write_in_flight_) return;
    TakePending();
    write_in_flight_ = true;
  }
  StartWrite(&writing_);
}

void GenerateCall::Close(const grpc::Status& status) {
  bool write = false, finish = false;
  {
    std::lock_guard lk(mu_);
    if (close_requested_) return;
    close_requested_ = true;
    status_ = status;
    if (!status.ok() || broken_) pending_.Clear();
    if (!write_in_flight_) {
      if (!Empty(pending_)) {
        TakePending();
        write_in_flight_ = write = true;
      } else {
        finish_called_ = finish = true;
      }
    }
  }
  if (write) StartWrite(&writing_);
  if (finish) Finish(status);
}

void GenerateCall::OnWriteDone(bool ok) {
  bool write = false, finish = false;
  grpc::Status st;
  {
    std::lock_guard lk(mu_);
    write_in_flight_ = false;
    if (!ok) {
      broken_ = true;
      pending_.Clear();
    }
    if (!Empty(pending_)) {
      TakePending();
      write_in_flight_ = write = true;
    } else if (close_requested_ && !finish_called_) {
      finish_called_ = finish = true;
      st = status_;
    }
  }
  if (write) StartWrite(&writing_);
  if (finish) Finish(st);
}

void GenerateCall::OnCancel() {
  cancelled_.store(true, std::memory_order_release);
  if (on_cancel_) on_cancel_();
}

grpc::Status GenerateCall::CancelStatus() const {
  // The client's deadline runs from when it sent the call, ours from when we received it, so a
  // client whose deadline expired cancels a moment before our own deadline passes. A cancel that
  // close to the deadline is the deadline (the ambiguity only touches the failure-code metric).
  constexpr auto kDeadlineSlack = std::chrono::milliseconds(250);
  if (std::chrono::system_clock::now() + kDeadlineSlack >= ctx_->deadline()) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded");
  }
  return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
}

void GenerateCall::OnDone() { Unref(); }

}  // namespace specd::serve
