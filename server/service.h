// The specd.v1.Specd service on gRPC's callback API: no thread per request. Generate validates
// on the receiving thread and hands the stream to the scheduler; the small unary calls answer
// inline.
#pragma once

#include "server/cli_text.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "server/validate.h"
#include "specd/v1/specd.grpc.pb.h"

namespace specd::serve {

class SpecdService final : public v1::Specd::CallbackService {
 public:
  SpecdService(Scheduler* scheduler, const cli::TextCodec* text, Metrics* metrics, ServeLimits limits,
               v1::ModelInfo info)
      : scheduler_(scheduler), text_(text), metrics_(metrics), limits_(std::move(limits)), info_(std::move(info)) {}

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext* ctx,
                                                           const v1::GenerateRequest* req) override;
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* ctx, const v1::AbortRequest* req,
                                  v1::AbortResponse* resp) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* ctx, const v1::TokenizeRequest* req,
                                     v1::TokenizeResponse* resp) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* ctx, const v1::DetokenizeRequest* req,
                                       v1::DetokenizeResponse* resp) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* ctx, const v1::GetModelInfoRequest* req,
                                         v1::ModelInfo* resp) override;

 private:
  Scheduler* scheduler_;
  const cli::TextCodec* text_;
  Metrics* metrics_;
  const ServeLimits limits_;
  const v1::ModelInfo info_;
};

}  // namespace specd::serve
