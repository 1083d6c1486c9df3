#include "speculative/draft_choice.h"

#include "speculative/rng.h"

namespace specd {

StatusOr<std::vector<int32_t>> AppendDraftTokens(Backend& be, Tensor& logits, const std::vector<int64_t>& row,
                                                 const std::vector<const DraftRequest*>& reqs, int j,
                                                 const std::vector<DraftProposal*>& out) {
  const int64_t R = logits.dim(0);
  std::vector<TokenRowSpec> spec(static_cast<size_t>(R));
  for (size_t b = 0; b < reqs.size(); ++b) {
    const DraftRequest& rq = *reqs[b];
    TokenRowSpec& t = spec[static_cast<size_t>(row[b])];
    t = RowSpecOf(*rq.sampling, static_cast<int64_t>(rq.context->size()) + j - 1);
    t.index = j;
    t.stream = static_cast<int32_t>(RngStream::kDraft);
  }
  Tensor choice = be.Empty(DType::kI32, {R, 2});
  be.ChooseTokens(logits, spec, Tensor{}, choice);
  SPECD_RETURN_IF_ERROR(be.TakeError());
  const std::vector<int32_t> flat = be.DownloadI32(choice);
  SPECD_RETURN_IF_ERROR(be.TakeError());
  std::vector<int32_t> tok(reqs.size());
  for (size_t b = 0; b < reqs.size(); ++b) {
    tok[b] = flat[2 * static_cast<size_t>(row[b])];
    out[b]->tokens.push_back(tok[b]);
    const SamplingParams& sp = *reqs[b]->sampling;
    if (!sp.greedy() && sp.mode == SamplingMode::kRejection) {
      out[b]->probs.push_back(be.DownloadF32(logits.Rows(row[b], 1)));
      SPECD_RETURN_IF_ERROR(be.TakeError());
    }
  }
  return tok;
}

}  // namespace specd
