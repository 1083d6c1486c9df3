// The specd.v1.Specd service on gRPC's callback API: no thread per request. Generate validates
// on the receiving thread and hands the stream to the batcher; the small unary calls answer
// inline.
#pragma once

#include "server/batcher.h"
#include "server/cli_text.h"
#include "server/grpc_sink.h"
#include "server/metrics.h"
#include "server/validate.h"
#include "specd/v1/specd.grpc.pb.h"

namespace specd::serve {

// Every method is registered raw (bytes in, bytes out) and parses its own request: gRPC's own
// handling of a request that does not parse answered UNIMPLEMENTED with no message, uncounted.
// Here it is INVALID_ARGUMENT naming the message type, logged, and (for Generate) counted.
using RawSpecdService = v1::Specd::WithRawCallbackMethod_Generate<v1::Specd::WithRawCallbackMethod_Abort<
    v1::Specd::WithRawCallbackMethod_Tokenize<v1::Specd::WithRawCallbackMethod_Detokenize<
        v1::Specd::WithRawCallbackMethod_GetModelInfo<v1::Specd::Service>>>>>;

class SpecdService final : public RawSpecdService {
 public:
  // api_key: empty = no authentication; else every RPC of this service must carry the metadata
  // `authorization: Bearer <api_key>` (UNAUTHENTICATED otherwise).
  SpecdService(Batcher* batcher, const cli::TextCodec* text, Metrics* metrics, ServeLimits limits,
               v1::ModelInfo info, std::string api_key = {})
      : batcher_(batcher),
        text_(text),
        metrics_(metrics),
        limits_(std::move(limits)),
        info_(std::move(info)),
        api_key_(std::move(api_key)) {}

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* ctx,
                                                       const grpc::ByteBuffer* req) override;
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                  grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                     grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                       grpc::ByteBuffer* resp) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                         grpc::ByteBuffer* resp) override;

 private:
  grpc::Status Authorize(const grpc::CallbackServerContext* ctx) const;
  // The typed handlers behind the raw methods.
  grpc::Status DoAbort(const v1::AbortRequest& req, v1::AbortResponse* resp);
  grpc::Status DoTokenize(const v1::TokenizeRequest& req, v1::TokenizeResponse* resp);
  grpc::Status DoDetokenize(const v1::DetokenizeRequest& req, v1::DetokenizeResponse* resp);
  // Parses `raw` as Req, calls `handle`, serializes its response into `out`.
  template <class Req, class Resp, class F>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* raw,
                                  grpc::ByteBuffer* out, F handle);

  Batcher* batcher_;
  const cli::TextCodec* text_;
  Metrics* metrics_;
  const ServeLimits limits_;
  const v1::ModelInfo info_;
  const std::string api_key_;
};

}  // namespace specd::serve
