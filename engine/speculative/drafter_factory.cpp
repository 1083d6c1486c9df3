#include "qwen35/model.h"
#include "speculative/drafter.h"

namespace specd {

Status CheckDrafterName(std::string_view name) {
  if (name == "none" || name == "ngram" || name == "draft" || name == "mtp") return Status::Ok();
  return InvalidArgument("unknown drafter '{}' (expected none, ngram, draft or mtp)", name);
}

StatusOr<std::unique_ptr<Drafter>> MakeDrafter(std::string_view name, Qwen35Model* target, Qwen35Model* draft,
                                               int max_seqs, int64_t max_ctx, int max_k) {
  SPECD_RETURN_IF_ERROR(CheckDrafterName(name));
  if (name == "ngram") return MakeNgramDrafter();
  if (name == "draft") {
    if (draft == nullptr) return InvalidArgument("drafter 'draft' needs a draft model");
    return MakeDraftModelDrafter(draft, target->config().vocab_size, max_seqs, max_ctx, max_k);
  }
  if (name == "mtp") return MakeMtpDrafter(target, max_seqs, max_ctx, max_k);
  return std::unique_ptr<Drafter>();  // "none"
}

}  // namespace specd
