// Drafting with a small Qwen3.5 model. Each sequence owns a slot in the draft's cache. Per step:
// the tokens the draft has not consumed yet go in one cached forward (kUpdate), then a checkpoint,
// then k-1 single-token steps that advance AND log (kUpdateLog). After the verify, Commit
// restores the checkpoint and replays exactly the accepted drafts — no re-run of the model.
#include <algorithm>
#include <map>

#include "qwen35/model.h"
#include "speculative/draft_choice.h"
#include "speculative/drafter.h"
#include "speculative/slot_drafter.h"

namespace specd {
namespace {

struct DraftSeq {
  int slot = 0;
  int64_t consumed = 0;  // context tokens the draft's slot has consumed
  int proposed = 0;
};

class DraftModelDrafter final : public SlotDrafter<DraftSeq> {
 public:
  DraftModelDrafter(Qwen35Model* m, std::unique_ptr<ModelCache> c) : SlotDrafter(std::move(c)), model_(m) {}
  std::string name() const override { return "draft"; }

  Status Propose(const std::vector<DraftRequest>& reqs, std::vector<DraftProposal>& out) override {
    out.assign(reqs.size(), {});
    std::vector<SeqInput> batch;
    std::vector<size_t> who;
    for (size_t r = 0; r < reqs.size(); ++r) {
      if (reqs[r].k <= 0) continue;
      auto it = seqs_.find(reqs[r].seq_id);
      if (it == seqs_.end()) return Internal("draft: unknown sequence {}", reqs[r].seq_id);
      DraftSeq& s = it->second;
      const auto& ctx = *reqs[r].context;
      if (s.consumed >= static_cast<int64_t>(ctx.size())) return Internal("draft: nothing new to consume");
      batch.push_back(SeqInput{s.slot, {ctx.begin() + s.consumed, ctx.end()}, StateMode::kUpdate, false});
      who.push_back(r);
    }
    Backend* be = model_->backend();
    for (int j = 1; !batch.empty(); ++j) {
      SPECD_ASSIGN_OR_RETURN(ForwardOutput fo, model_->Forward(batch, *cache_));
      std::vector<const DraftRequest*> rq;
      std::vector<DraftProposal*> dst;
      for (size_t r : who) {
        rq.push_back(&reqs[r]);
        dst.push_back(&out[r]);
      }
      SPECD_ASSIGN_OR_RETURN(std::vector<int32_t> tok, AppendDraftTokens(*be, fo.logits, fo.row0, rq, j, dst));
      std::vector<SeqInput> next;
      std::vector<size_t> next_who;
      for (size_t b = 0; b < batch.size(); ++b) {
        const size_t r = who[b];
        DraftSeq& s = seqs_[reqs[r].seq_id];
        if (j == 1) {
          s.consumed = static_cast<int64_t>(reqs[r].context->size());
          SPECD_RETURN_IF_ERROR(cache_->BeginLog(s.slot, /*checkpoint=*/true));
        }
        if (j < reqs[r].k) {
          next.push_back(SeqInput{s.slot, {tok[b]}, StateMode::kUpdateLog, false});
          next_who.push_back(r);
        }
      }
      batch = std::move(next);
      who = std::move(next_who);
    }
    for (size_t r = 0; r < reqs.size(); ++r) {
      if (reqs[r].k > 0) seqs_[reqs[r].seq_id].proposed = static_cast<int>(out[r].tokens.size());
    }
    return Status::Ok();
  }

  Status Accept(const std::vector<DraftOutcome>& outcomes) override {
    for (const auto& o : outcomes) {
      auto it = seqs_.find(o.seq_id);
      if (it == seqs_.end() || o.proposed <= 0) continue;
      DraftSeq& s = it->second;
      // The draft consumed d1..d_{k-1}; keep those the target accepted. An accepted d_k was never
      // consumed: it stays pending and goes into the next step's first forward.
      const int keep = std::min(o.accepted, o.proposed - 1);
      SPECD_RETURN_IF_ERROR(cache_->Commit(s.slot, keep));
      s.consumed += keep;
      s.proposed = 0;
    }
    return Status::Ok();
  }

 private:
  Qwen35Model* model_;
};

}  // namespace

StatusOr<std::unique_ptr<Drafter>> MakeDraftModelDrafter(Qwen35Model* draft, int64_t target_vocab,
                                                         int max_seqs, int64_t max_ctx, int max_k) {
  if (draft->config().vocab_size != target_vocab) {
    return InvalidArgument("draft model vocab size {} differs from the target's {}",
                           draft->config().vocab_size, target_vocab);
  }
  CacheOptions co;
  co.num_slots = max_seqs;
  co.max_ctx = max_ctx;
  co.log_capacity = std::max(1, max_k);
  co.checkpoints = true;
  SPECD_ASSIGN_OR_RETURN(auto cache, draft->NewCache(co));
  return std::unique_ptr<Drafter>(new DraftModelDrafter(draft, std::move(cache)));
}

}  // namespace specd
