#include "server/grpc_sink.h"

#include "server/status_map.h"

namespace specd::serve {
namespace {

void FillStats(const SpeculativeStats& s, v1::SpeculativeStats* p) {
  p->set_draft_tokens(static_cast<uint64_t>(s.draft_tokens));
  p->set_accepted_tokens(static_cast<uint64_t>(s.accepted_tokens));
  p->set_verify_steps(static_cast<uint64_t>(s.verify_steps));
  p->set_acceptance_rate(s.acceptance_rate());
  p->set_mean_acceptance_length(s.mean_acceptance_length());
  for (double a : s.per_position_acceptance()) p->add_per_position_acceptance(a);
  for (int64_t n : s.drafted_at) p->add_drafted_per_pos(static_cast<uint64_t>(n));
  for (int64_t n : s.accepted_at) p->add_accepted_per_pos(static_cast<uint64_t>(n));
}

}  // namespace

v1::FinishReason ToProto(FinishReason r) {
  switch (r) {
    case FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case FinishReason::kEos: return v1::FINISH_REASON_EOS;
    case FinishReason::kStop: return v1::FINISH_REASON_STOP;
    case FinishReason::kAborted: return v1::FINISH_REASON_ABORT;
    case FinishReason::kNone: break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void GrpcSink::FillText(std::string_view text, bool final, v1::GenerateResponse* msg) {
  if (!parser_) {
    msg->set_text(std::string(text));
    return;
  }
  ChatOutputDelta d = final ? parser_->FeedLast(text) : parser_->Feed(text);
  msg->set_text(std::move(d.content));
  msg->set_reasoning_text(std::move(d.reasoning));
  for (auto& c : d.tool_calls) {
    v1::ToolCall* t = msg->add_tool_calls();
    t->set_name(std::move(c.name));
    t->set_arguments_json(std::move(c.arguments_json));
  }
}

void GrpcSink::OnTokens(const std::string& request_id, std::span<const int32_t> ids, std::string text) {
  v1::GenerateResponse delta;
  delta.set_request_id(request_id);
  delta.mutable_token_ids()->Add(ids.begin(), ids.end());
  FillText(text, /*final=*/false, &delta);
  call_->Write(delta);
}

void GrpcSink::OnFinished(std::span<const int32_t> ids, std::string text, const RequestOutcome& o) {
  v1::GenerateResponse last;
  last.set_request_id(o.request_id);
  last.mutable_token_ids()->Add(ids.begin(), ids.end());
  FillText(text, /*final=*/true, &last);
  last.set_finish_reason(ToProto(o.reason));
  last.set_stop_string(o.stop_string);
  last.mutable_usage()->set_prompt_tokens(static_cast<uint32_t>(o.prompt_tokens));
  last.mutable_usage()->set_completion_tokens(static_cast<uint32_t>(o.completion_tokens));
  last.mutable_usage()->set_cached_prompt_tokens(static_cast<uint32_t>(o.cached_prompt_tokens));
  FillStats(o.stats, last.mutable_stats());
  call_->Write(last);
  call_->Close(grpc::Status::OK);
}

void GrpcSink::OnFailed(const Status& status) { call_->Close(ToGrpc(status)); }

std::optional<Status> GrpcSink::Cancelled() const {
  if (!call_->cancelled()) return std::nullopt;
  const grpc::Status st = call_->CancelStatus();
  return Status(static_cast<StatusCode>(static_cast<int>(st.error_code())), st.error_message());
}

}  // namespace specd::serve
