// Errors as values: a small Status / StatusOr<T>, so that no exception crosses the engine or
// the gRPC boundary. Codes mirror the gRPC ones the server maps them to.
//
// The error model, in one place:
// - Everything the engine offers (loading, Create, Add, Step, Commit, ...) returns a Status.
// - The runtime's Backend ops are void and deep inside a forward, so they throw instead:
//   std::bad_alloc when memory runs out, std::invalid_argument / std::out_of_range when a caller
//   broke an op's contract (a bug). Asynchronous device errors are kept by the backend and
//   collected with Backend::TakeError() where a forward or a rollback ends.
// - The engine's entry points turn those into a status: SpeculativeEngine::Step (kResourceExhausted
//   for memory, kInternal for anything else), Qwen35Model::Forward and ModelCache::Create (memory).
// - The server treats a failed step as the loss of that step's requests: it fails them, builds a
//   new engine and goes on (server/batcher.cpp); it also catches anything thrown as a last line.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace specd {

enum class StatusCode {
  kOk = 0,
  kCancelled = 1,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
};

const char* StatusCodeName(StatusCode c);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return {}; }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

template <typename... Args>
Status InvalidArgument(fmt::format_string<Args...> f, Args&&... a) {
  return Status(StatusCode::kInvalidArgument, fmt::format(f, std::forward<Args>(a)...));
}
template <typename... Args>
Status AlreadyExists(fmt::format_string<Args...> f, Args&&... a) {
  return Status(StatusCode::kAlreadyExists, fmt::format(f, std::forward<Args>(a)...));
}
template <typename... Args>
Status Unavailable(fmt::format_string<Args...> f, Args&&... a) {
  return Status(StatusCode::kUnavailable, fmt::format(f, std::forward<Args>(a)...));
}
template <typename... Args>
Status NotFound(fmt::format_string<Args...> f, Args&&... a) {
  return Status(StatusCode::kNotFound, fmt::format(f, std::forward<Args>(a)...));
}
template <typename... Args>
Status DataLoss(fmt::format_string<Args...> f, Args&&... a) {
  return Status(StatusCode::kDataLoss, fmt::format(f, std::forward<Args>(a)...));
}
template <typename... Args>
Status Unimplemented(fmt::format_string<Args...> f, Args&&... a) {
  return Status(StatusCode::kUnimplemented, fmt::format(f, std::forward<Args>(a)...));
}
template <typename... Args>
Status Internal(fmt::format_string<Args...> f, Args&&... a) {
  return Status(StatusCode::kInternal, fmt::format(f, std::forward<Args>(a)...));
}
template <typename... Args>
Status ResourceExhausted(fmt::format_string<Args...> f, Args&&... a) {
  return Status(StatusCode::kResourceExhausted, fmt::format(f, std::forward<Args>(a)...));
}
template <typename... Args>
Status FailedPrecondition(fmt::format_string<Args...> f, Args&&... a) {
  return Status(StatusCode::kFailedPrecondition, fmt::format(f, std::forward<Args>(a)...));
}

template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(Status s) : v_(std::move(s)) {}  // NOLINT: implicit by design
  StatusOr(T value) : v_(std::move(value)) {}  // NOLINT
  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<Status, T> v_;
};

}  // namespace specd

#define SPECD_CONCAT_INNER_(a, b) a##b
#define SPECD_CONCAT_(a, b) SPECD_CONCAT_INNER_(a, b)

#define SPECD_RETURN_IF_ERROR(expr)            \
  do {                                         \
    ::specd::Status specd_st_ = (expr);        \
    if (!specd_st_.ok()) return specd_st_;     \
  } while (0)

#define SPECD_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()

#define SPECD_ASSIGN_OR_RETURN(lhs, expr) \
  SPECD_ASSIGN_OR_RETURN_IMPL_(SPECD_CONCAT_(specd_so_, __LINE__), lhs, expr)
