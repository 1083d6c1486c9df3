#include "speculative/drafter.h"

namespace specd {

Status CheckDrafterName(std::string_view name) {
  if (name == "none" || name == "ngram" || name == "draft") return Status::Ok();
  return InvalidArgument("unknown drafter '{}' (expected none, ngram or draft)", name);
}

StatusOr<std::unique_ptr<Drafter>> MakeDrafter(std::string_view name, Qwen35Model* draft, int64_t target_vocab,
                                               int max_seqs, int64_t max_ctx, int max_k) {
  SPECD_RETURN_IF_ERROR(CheckDrafterName(name));
  if (name == "ngram") return MakeNgramDrafter();
  if (name == "draft") {
    if (draft == nullptr) return InvalidArgument("drafter 'draft' needs a draft model");
    return MakeDraftModelDrafter(draft, target_vocab, max_seqs, max_ctx, max_k);
  }
  return std::unique_ptr<Drafter>();  // "none"
}

}  // namespace specd
