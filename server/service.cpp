#include "server/service.h"

#include <spdlog/spdlog.h>

#include "server/api_key.h"
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

// The request's bytes as a Msg, or INVALID_ARGUMENT naming the type (and logged: a client that
// sends garbage is worth knowing about).
template <class Msg>
grpc::Status Parse(const grpc::ByteBuffer* raw, Msg* msg) {
  grpc::ByteBuffer copy(*raw);  // Deserialize consumes its buffer; this copy shares the slices
  const grpc::Status st = grpc::SerializationTraits<Msg>::Deserialize(&copy, msg);
  if (st.ok()) return st;
  const std::string what = fmt::format("cannot parse the request as {} ({} bytes): {}", Msg::descriptor()->full_name(),
                                       raw->Length(), st.error_message().empty() ? "malformed" : st.error_message());
  spdlog::info("request rejected: INVALID_ARGUMENT ({})", what);
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, what);
}

}  // namespace

grpc::Status SpecdService::Authorize(const grpc::CallbackServerContext* ctx) const {
  if (api_key_.empty()) return grpc::Status::OK;
  const auto& md = ctx->client_metadata();
  const auto it = md.find("authorization");
  if (it != md.end() && BearerMatches(std::string_view(it->second.data(), it->second.size()), api_key_)) {
    return grpc::Status::OK;
  }
  spdlog::info("request rejected: UNAUTHENTICATED (from {})", ctx->peer());
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      "missing or wrong API key: send the metadata `authorization: Bearer <key>`");
}

template <class Req, class Resp, class F>
grpc::ServerUnaryReactor* SpecdService::Unary(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* raw,
                                              grpc::ByteBuffer* out, F handle) {
  Req req;
  Resp resp;
  grpc::Status st = Authorize(ctx);
  if (st.ok()) st = Parse(raw, &req);
  if (st.ok()) st = handle(req, &resp);
  if (st.ok()) {
    bool own = false;
    st = grpc::SerializationTraits<Resp>::Serialize(resp, out, &own);
  }
  return Answer(ctx, st);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* SpecdService::Generate(grpc::CallbackServerContext* ctx,
                                                                   const grpc::ByteBuffer* raw) {
  Batcher* batcher = batcher_;
  auto* call = new GenerateCall(ctx, [batcher] { batcher->Wake(); });
  // The service's reference, handed to the batcher (inside the sink) on success.
  auto grpc_sink = std::make_unique<GrpcSink>(CallRef(call));
  v1::GenerateRequest req;
  grpc::Status st = Authorize(ctx);
  if (st.ok()) st = Parse(raw, &req);
  if (!st.ok()) {
    metrics_->RequestFailed(GrpcCodeName(st.error_code()));
    call->Close(st);
    return call;
  }
  StatusOr<PreparedRequest> prepared = PrepareGenerate(req, limits_, *text_);
  if (prepared.ok() && prepared->chat_output.parse) {
    // Chat output is split into text, reasoning_text and tool_calls (Qwen3.5's format).
    const ChatOutputSpec& co = prepared->chat_output;
    auto parser = ChatOutputParser::Create({co.starts_in_reasoning, co.parse_tool_calls, co.tools_json});
    if (parser.ok()) {
      grpc_sink->SetOutputParser(std::move(*parser));
    } else {
      prepared = parser.status();
    }
  }
  std::unique_ptr<RequestSink> sink = std::move(grpc_sink);
  st = ToGrpc(prepared.ok() ? batcher_->Submit(std::move(*prepared), sink) : prepared.status());
  if (!st.ok()) {
    metrics_->RequestFailed(GrpcCodeName(st.error_code()));
    spdlog::info("request {} rejected: {} ({})", req.request_id().empty() ? "-" : req.request_id(),
                 GrpcCodeName(st.error_code()), st.error_message());
    call->Close(st);
  }
  return call;
}

grpc::ServerUnaryReactor* SpecdService::Abort(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                              grpc::ByteBuffer* resp) {
  return Unary<v1::AbortRequest, v1::AbortResponse>(
      ctx, req, resp, [this](const v1::AbortRequest& r, v1::AbortResponse* o) { return DoAbort(r, o); });
}

grpc::ServerUnaryReactor* SpecdService::Tokenize(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                                 grpc::ByteBuffer* resp) {
  return Unary<v1::TokenizeRequest, v1::TokenizeResponse>(
      ctx, req, resp, [this](const v1::TokenizeRequest& r, v1::TokenizeResponse* o) { return DoTokenize(r, o); });
}

grpc::ServerUnaryReactor* SpecdService::Detokenize(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                                   grpc::ByteBuffer* resp) {
  return Unary<v1::DetokenizeRequest, v1::DetokenizeResponse>(
      ctx, req, resp, [this](const v1::DetokenizeRequest& r, v1::DetokenizeResponse* o) { return DoDetokenize(r, o); });
}

grpc::ServerUnaryReactor* SpecdService::GetModelInfo(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                                     grpc::ByteBuffer* resp) {
  return Unary<v1::GetModelInfoRequest, v1::ModelInfo>(ctx, req, resp,
                                                       [this](const v1::GetModelInfoRequest&, v1::ModelInfo* o) {
                                                         *o = info_;
                                                         return grpc::Status::OK;
                                                       });
}

grpc::Status SpecdService::DoAbort(const v1::AbortRequest& req, v1::AbortResponse* resp) {
  if (req.request_id().empty()) return {grpc::StatusCode::INVALID_ARGUMENT, "request_id is empty"};
  resp->set_found(batcher_->Abort(req.request_id()));
  return grpc::Status::OK;
}

grpc::Status SpecdService::DoTokenize(const v1::TokenizeRequest& req, v1::TokenizeResponse* resp) {
  // FAILED_PRECONDITION, not INVALID_ARGUMENT: no argument makes this call work on this server.
  if (!text_->has_tokenizer()) return {grpc::StatusCode::FAILED_PRECONDITION, kNoTokenizer};
  switch (req.input_case()) {
    case v1::TokenizeRequest::kText: {
      auto ids = text_->Encode(req.text());
      if (!ids.ok()) return {grpc::StatusCode::INVALID_ARGUMENT, ids.status().message()};
      resp->mutable_ids()->Add(ids->begin(), ids->end());
      return grpc::Status::OK;
    }
    case v1::TokenizeRequest::kChat: {
      // The same encoding Generate uses for this chat (content specials as text by default).
      auto enc = EncodeChat(req.chat(), *text_);
      if (!enc.ok()) return ToGrpc(enc.status());
      resp->set_rendered(enc->text);
      resp->mutable_ids()->Add(enc->ids.begin(), enc->ids.end());
      return grpc::Status::OK;
    }
    case v1::TokenizeRequest::INPUT_NOT_SET: break;
  }
  return {grpc::StatusCode::INVALID_ARGUMENT, "set text or chat"};
}

grpc::Status SpecdService::DoDetokenize(const v1::DetokenizeRequest& req, v1::DetokenizeResponse* resp) {
  if (!text_->has_tokenizer()) return {grpc::StatusCode::FAILED_PRECONDITION, kNoTokenizer};
  for (int i = 0; i < req.ids_size(); ++i) {
    if (req.ids(i) < 0 || req.ids(i) >= limits_.vocab_size) {
      return {grpc::StatusCode::INVALID_ARGUMENT,
                          "token id " + std::to_string(req.ids(i)) + " is out of the vocabulary [0, " +
                              std::to_string(limits_.vocab_size) + ")"};
    }
  }
  // Default false: Detokenize(Tokenize(text)) gives the text back, special tokens included.
  const bool skip = req.has_skip_special_tokens() && req.skip_special_tokens();
  resp->set_text(text_->Decode({req.ids().begin(), req.ids().end()}, skip));
  return grpc::Status::OK;
}

}  // namespace specd::serve
