#include "server/service.h"

#include <spdlog/spdlog.h>

#include "server/generate_call.h"
#include "server/status_map.h"

namespace specd::serve {
namespace {

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* ctx, const grpc::Status& st) {
  grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
  r->Finish(st);
  return r;
}

constexpr const char* kNoTokenizer = "model has no tokenizer";

}  // namespace

grpc::ServerWriteReactor<v1::GenerateResponse>* SpecdService::Generate(grpc::CallbackServerContext* ctx,
                                                                       const v1::GenerateRequest* req) {
  Scheduler* sched = scheduler_;
  auto* call = new GenerateCall(ctx, [sched] { sched->Wake(); });
  CallRef ref(call);  // the service's reference, handed to the scheduler on success
  auto prepared = PrepareGenerate(*req, limits_, *text_);
  grpc::Status st = prepared.ok() ? scheduler_->Submit(std::move(*prepared), ref) : ToGrpc(prepared.status());
  if (!st.ok()) {
    metrics_->RequestFailed(GrpcCodeName(st.error_code()));
    spdlog::info("request {} rejected: {} ({})", req->request_id().empty() ? "-" : req->request_id(),
                 GrpcCodeName(st.error_code()), st.error_message());
    call->Close(st);
  }
  return call;
}

grpc::ServerUnaryReactor* SpecdService::Abort(grpc::CallbackServerContext* ctx, const v1::AbortRequest* req,
                                              v1::AbortResponse* resp) {
  if (req->request_id().empty()) return Answer(ctx, {grpc::StatusCode::INVALID_ARGUMENT, "request_id is empty"});
  resp->set_found(scheduler_->Abort(req->request_id()));
  return Answer(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* SpecdService::Tokenize(grpc::CallbackServerContext* ctx, const v1::TokenizeRequest* req,
                                                 v1::TokenizeResponse* resp) {
  // FAILED_PRECONDITION, not INVALID_ARGUMENT: no argument makes this call work on this server.
  if (!text_->has_tokenizer()) return Answer(ctx, {grpc::StatusCode::FAILED_PRECONDITION, kNoTokenizer});
  std::string text;
  switch (req->input_case()) {
    case v1::TokenizeRequest::kText: text = req->text(); break;
    case v1::TokenizeRequest::kChat: {
      auto rendered = RenderChat(req->chat(), *text_);
      if (!rendered.ok()) return Answer(ctx, ToGrpc(rendered.status()));
      text = *rendered;
      resp->set_rendered(text);
      break;
    }
    case v1::TokenizeRequest::INPUT_NOT_SET:
      return Answer(ctx, {grpc::StatusCode::INVALID_ARGUMENT, "set text or chat"});
  }
  auto ids = text_->Encode(text);
  if (!ids.ok()) return Answer(ctx, {grpc::StatusCode::INVALID_ARGUMENT, ids.status().message()});
  resp->mutable_ids()->Add(ids->begin(), ids->end());
  return Answer(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* SpecdService::Detokenize(grpc::CallbackServerContext* ctx,
                                                   const v1::DetokenizeRequest* req, v1::DetokenizeResponse* resp) {
  if (!text_->has_tokenizer()) return Answer(ctx, {grpc::StatusCode::FAILED_PRECONDITION, kNoTokenizer});
  for (int i = 0; i < req->ids_size(); ++i) {
    if (req->ids(i) < 0 || req->ids(i) >= limits_.vocab_size) {
      return Answer(ctx, {grpc::StatusCode::INVALID_ARGUMENT,
                          "token id " + std::to_string(req->ids(i)) + " is out of the vocabulary [0, " +
                              std::to_string(limits_.vocab_size) + ")"});
    }
  }
  // Default false: Detokenize(Tokenize(text)) gives the text back, special tokens included.
  const bool skip = req->has_skip_special_tokens() && req->skip_special_tokens();
  resp->set_text(text_->Decode({req->ids().begin(), req->ids().end()}, skip));
  return Answer(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* SpecdService::GetModelInfo(grpc::CallbackServerContext* ctx, const v1::GetModelInfoRequest*,
                                                     v1::ModelInfo* resp) {
  *resp = info_;
  return Answer(ctx, grpc::Status::OK);
}

}  // namespace specd::serve
