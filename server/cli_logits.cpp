// `specd logits`: logits of a prompt, optionally as prefill + ONE cached multi-token forward.
#include "server/cli_logits.h"

#include "checkpoint/safetensors.h"
#include "qwen35/model.h"
#include "runtime/backend.h"

namespace specd::cli {

Status RunLogits(const LogitsArgs& a) {
  SPECD_ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseIds(a.ids));
  if (a.split < 0 || a.split >= static_cast<int64_t>(ids.size())) {
    return InvalidArgument("--split {} must be in [0, {})", a.split, ids.size());
  }
  SPECD_ASSIGN_OR_RETURN(auto backend, MakeBackend(a.device));
  LoadOptions lo;
  if (a.quantize == "fp8") lo.quantize_fp8 = Fp8Blocks{128, 128};
  SPECD_ASSIGN_OR_RETURN(auto model, Qwen35Model::Load(a.model, backend.get(), lo));
  CacheOptions co;
  co.max_ctx = static_cast<int64_t>(ids.size());
  SPECD_ASSIGN_OR_RETURN(auto cache, model->NewCache(co));
  SPECD_ASSIGN_OR_RETURN(int slot, cache->AllocSlot());
  std::vector<float> all;
  auto run = [&](std::vector<int32_t> part) -> Status {
    SPECD_ASSIGN_OR_RETURN(ForwardOutput o, model->Forward({SeqInput{slot, std::move(part), StateMode::kUpdate, true}}, *cache));
    auto v = backend->DownloadF32(o.logits);
    all.insert(all.end(), v.begin(), v.end());
    return Status::Ok();
  };
  if (a.split > 0) {
    SPECD_RETURN_IF_ERROR(run(std::vector<int32_t>(ids.begin(), ids.begin() + a.split)));
    SPECD_RETURN_IF_ERROR(run(std::vector<int32_t>(ids.begin() + a.split, ids.end())));
  } else {
    SPECD_RETURN_IF_ERROR(run(ids));
  }
  const int64_t T = static_cast<int64_t>(ids.size());
  return SaveSafetensors(a.out, {{"logits", F32Tensor({T, model->config().vocab_size}, all)}});
}

}  // namespace specd::cli
