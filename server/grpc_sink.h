// The gRPC side of a request: a RequestSink that turns the batcher's tokens and outcome into
// GenerateResponse messages on one GenerateCall stream.
#pragma once

#include <optional>

#include "server/generate_call.h"
#include "server/request_sink.h"
#include "tokenizer/chat_output_parser.h"

namespace specd::serve {

class GrpcSink final : public RequestSink {
 public:
  explicit GrpcSink(CallRef call) : call_(std::move(call)) {}
  // A chat request's output is split into text / reasoning_text / tool_calls by this parser.
  void SetOutputParser(ChatOutputParser parser) { parser_.emplace(std::move(parser)); }

  void OnTokens(const std::string& request_id, std::span<const int32_t> ids, std::string text) override;
  void OnFinished(std::span<const int32_t> ids, std::string text, const RequestOutcome& outcome) override;
  void OnFailed(const Status& status) override;
  std::optional<Status> Cancelled() const override;
  Clock::time_point arrival() const override { return call_->arrival(); }

 private:
  // `text` through the parser (when there is one) into `msg`'s text, reasoning and tool calls.
  void FillText(std::string_view text, bool final, v1::GenerateResponse* msg);

  CallRef call_;
  std::optional<ChatOutputParser> parser_;  // batcher thread only, after Submit
};

v1::FinishReason ToProto(FinishReason r);

}  // namespace specd::serve
