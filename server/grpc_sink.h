// The gRPC side of a request: a RequestSink that turns the batcher's tokens and outcome into
// GenerateResponse messages on one GenerateCall stream.
#pragma once

#include "server/generate_call.h"
#include "server/request_sink.h"

namespace specd::serve {

class GrpcSink final : public RequestSink {
 public:
  explicit GrpcSink(CallRef call) : call_(std::move(call)) {}

  void OnTokens(const std::string& request_id, std::span<const int32_t> ids, std::string text) override;
  void OnFinished(std::span<const int32_t> ids, std::string text, const RequestOutcome& outcome) override;
  void OnFailed(const Status& status) override;
  std::optional<Status> Cancelled() const override;
  Clock::time_point arrival() const override { return call_->arrival(); }

 private:
  CallRef call_;
};

v1::FinishReason ToProto(FinishReason r);

}  // namespace specd::serve
