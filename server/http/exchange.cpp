#include "server/http/exchange.h"

namespace specd::serve::http {

void Exchange::Push(std::string_view text, size_t tokens) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    text_ += text;
    tokens_ += tokens;
  }
  cv_.notify_all();
}

void Exchange::Finish(std::string_view text, size_t tokens, const RequestOutcome& outcome) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    text_ += text;
    tokens_ += tokens;
    outcome_ = outcome;
    ended_ = true;
  }
  cv_.notify_all();
}

void Exchange::Fail(const Status& status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    failure_ = status;
    ended_ = true;
  }
  cv_.notify_all();
}

std::optional<Status> Exchange::Cancelled() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!client_gone_) return std::nullopt;
  return Status(StatusCode::kCancelled, "the HTTP client disconnected");
}

Exchange::Taken Exchange::Take(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !text_.empty() || tokens_ > 0 || (ended_ && !taken_end_); });
  Taken t;
  t.text.swap(text_);
  t.tokens = tokens_;
  tokens_ = 0;
  if (ended_ && !taken_end_) {
    taken_end_ = true;
    t.ended = true;
    t.outcome = outcome_;
    t.failure = failure_;
  }
  return t;
}

void Exchange::ClientGone() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (client_gone_ || ended_) return;
    client_gone_ = true;
  }
  if (wake_) wake_();
}

}  // namespace specd::serve::http
