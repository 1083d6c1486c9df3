// Drafting with the target's own MTP head (docs/mtp.md). Head row t pairs the target's
// final-normed hidden state h_t with token x_{t+1} and predicts x_{t+2}; the head's one attention
// layer keeps its own KV cache, one row per position.
//
// Per sequence the head's cache holds exactly the rows computed from REAL target states: after
// every step it has consumed positions 0 .. c-1 where c + 1 = the positions the target has
// consumed, and h_c (the last real hidden state, whose pair token may not be known yet) waits in
// `pending_`. Then:
//   ObserveTarget (after each target forward): rows c .. p1-2 for the new hidden states h up to
//     p1-1, in one batched head forward without lm_head; h_{p1-1} becomes the pending row.
//   Propose: the pending row with t0 (the sequence's last token) gives d1's logits (kUpdate);
//     then k-1 chained steps, each the drafted token with the head's own normed output, logged
//     (kUpdateLog) after BeginLog.
//   Accept: Commit(slot, 0). The chained rows were computed from the head's own outputs, not
//     from the target's; the accepted positions come back with real states at the next
//     ObserveTarget. The rollback is the KV length, nothing is re-run.
#include "qwen35/model.h"
#include "speculative/draft_choice.h"
#include "speculative/drafter.h"
#include "speculative/slot_drafter.h"

namespace specd {
namespace {

struct MtpSeq {
  int slot = 0;
  bool has_pending = false;  // pending_'s row of the slot holds the last real hidden state
};

class MtpDrafter final : public SlotDrafter<MtpSeq> {
 public:
  MtpDrafter(Qwen35Model* m, std::unique_ptr<ModelCache> c) : SlotDrafter(std::move(c)), model_(m) {
    Backend& be = *model_->backend();
    pending_ = be.Alloc(be.act_dtype(), {cache_->num_slots(), model_->config().hidden_size});
  }
  std::string name() const override { return "mtp"; }
  bool reads_target_hidden() const override { return true; }

  Status ObserveTarget(const Tensor& hidden, const std::vector<TargetRows>& rows) override {
    Backend& be = *model_->backend();
    const int64_t S = cache_->num_slots(), H = model_->config().hidden_size;
    if (hidden.dim(1) != H) return Internal("mtp: target hidden rows of width {} (want {})", hidden.dim(1), H);
    // One source for every row this needs: [pending rows of all slots ; the step's hidden rows].
    std::vector<SeqInput> in;
    std::vector<int64_t> take;                     // source row of each head input row
    std::vector<int64_t> keep(static_cast<size_t>(S));  // each slot's next pending row
    for (int64_t i = 0; i < S; ++i) keep[i] = i;
    for (const TargetRows& r : rows) {
      auto it = seqs_.find(r.seq_id);
      if (it == seqs_.end()) return Internal("mtp: unknown sequence {}", r.seq_id);
      MtpSeq& s = it->second;
      const int64_t c = cache_->length(s.slot), p1 = r.pos0 + r.kept;
      if (r.kept < 1 || p1 > static_cast<int64_t>(r.context->size()) || r.row0 + r.kept > hidden.dim(0) ||
          c != r.pos0 - (s.has_pending ? 1 : 0)) {
        return Internal("mtp: sequence {} at head row {} (pending {}) shown target rows [{}, {})", r.seq_id, c,
                        s.has_pending, r.pos0, p1);
      }
      if (p1 - 1 > c) {
        const auto& ctx = *r.context;
        in.push_back(SeqInput{s.slot, {ctx.begin() + c + 1, ctx.begin() + p1}, StateMode::kUpdate, false});
        for (int64_t t = c; t < p1 - 1; ++t) take.push_back(t < r.pos0 ? s.slot : S + r.row0 + (t - r.pos0));
      }
      keep[s.slot] = S + r.row0 + r.kept - 1;
      s.has_pending = true;
    }
    Tensor src = be.Empty(be.act_dtype(), {S + hidden.dim(0), H});
    Tensor head = src.Rows(0, S), tail = src.Rows(S, hidden.dim(0));
    be.CopyRows(pending_, head);
    be.CopyRows(hidden, tail);
    if (!in.empty()) {
      Tensor x = Gather(src, take);
      SPECD_RETURN_IF_ERROR(model_->MtpForward(in, x, *cache_, /*want_logits=*/false).status());
    }
    pending_ = Gather(src, keep);
    return be.TakeError();
  }

  Status Propose(const std::vector<DraftRequest>& reqs, std::vector<DraftProposal>& out) override {
    out.assign(reqs.size(), {});
    std::vector<SeqInput> batch;
    std::vector<size_t> who;
    std::vector<int64_t> take;
    for (size_t r = 0; r < reqs.size(); ++r) {
      if (reqs[r].k <= 0) continue;
      auto it = seqs_.find(reqs[r].seq_id);
      if (it == seqs_.end()) return Internal("mtp: unknown sequence {}", reqs[r].seq_id);
      MtpSeq& s = it->second;
      const auto& ctx = *reqs[r].context;
      // Decoding: the target consumed all but t0, so the head waits at the row of t0's pair.
      if (!s.has_pending || cache_->length(s.slot) + 2 != static_cast<int64_t>(ctx.size())) {
        return Internal("mtp: sequence {} at head row {} with {} context tokens", reqs[r].seq_id,
                        cache_->length(s.slot), ctx.size());
      }
      batch.push_back(SeqInput{s.slot, {ctx.back()}, StateMode::kUpdate, false});
      who.push_back(r);
      take.push_back(s.slot);
    }
    if (batch.empty()) return Status::Ok();
    Backend& be = *model_->backend();
    Tensor x = Gather(pending_, take);
    for (int j = 1; !batch.empty(); ++j) {
      SPECD_ASSIGN_OR_RETURN(Qwen35Model::MtpOutput mo, model_->MtpForward(batch, x, *cache_));
      std::vector<const DraftRequest*> rq;
      std::vector<DraftProposal*> dst;
      for (size_t r : who) {
        rq.push_back(&reqs[r]);
        dst.push_back(&out[r]);
      }
      SPECD_ASSIGN_OR_RETURN(std::vector<int32_t> tok,
                             AppendDraftTokens(be, mo.logits.logits, mo.logits.row0, rq, j, dst));
      if (!model_->mtp_vocab().empty()) ToFullVocab(tok, dst);
      std::vector<SeqInput> next;
      std::vector<size_t> next_who;
      std::vector<int64_t> next_rows;
      for (size_t b = 0; b < batch.size(); ++b) {
        const size_t r = who[b];
        MtpSeq& s = seqs_[reqs[r].seq_id];
        if (j == 1) {
          s.has_pending = false;  // consumed: the head now waits at t0's position
          SPECD_RETURN_IF_ERROR(cache_->BeginLog(s.slot, /*checkpoint=*/false));
        }
        if (j < reqs[r].k) {
          // A chained step: the drafted token with the head's own normed output, one position on.
          next.push_back(SeqInput{s.slot, {tok[b]}, StateMode::kUpdateLog, false});
          next_who.push_back(r);
          next_rows.push_back(mo.logits.row0[b]);
        }
      }
      if (!next.empty()) x = Gather(mo.hidden, next_rows);
      batch = std::move(next);
      who = std::move(next_who);
    }
    return Status::Ok();
  }

  Status Accept(const std::vector<DraftOutcome>& outcomes) override {
    for (const auto& o : outcomes) {
      auto it = seqs_.find(o.seq_id);
      // Whether the head drafted is the slot's own state, not the verify's count: a step whose
      // drafts were all dropped before the verify (o.proposed = 0) still rolls back.
      if (it == seqs_.end() || !cache_->logging(it->second.slot)) continue;
      // Only rows from real target states stay; ObserveTarget brings the accepted ones.
      SPECD_RETURN_IF_ERROR(cache_->Commit(it->second.slot, 0));
    }
    return Status::Ok();
  }


 private:
  // With a reduced draft vocabulary the head's logits column j is token vocab[j]: the drawn
  // tokens, and a rejection row's q (the verify divides by q(d)), go back to full-vocabulary ids.
  void ToFullVocab(std::vector<int32_t>& tok, const std::vector<DraftProposal*>& dst) const {
    const std::vector<int32_t>& vocab = model_->mtp_vocab();
    for (size_t b = 0; b < tok.size(); ++b) {
      tok[b] = vocab[static_cast<size_t>(tok[b])];
      dst[b]->tokens.back() = tok[b];
      if (dst[b]->probs.size() == dst[b]->tokens.size()) {
        std::vector<float> q(static_cast<size_t>(model_->config().vocab_size), 0.f);
        const std::vector<float>& sub = dst[b]->probs.back();
        for (size_t j = 0; j < sub.size(); ++j) q[static_cast<size_t>(vocab[j])] = sub[j];
        dst[b]->probs.back() = std::move(q);
      }
    }
  }

  Tensor Gather(const Tensor& src, const std::vector<int64_t>& rows) {
    Backend& be = *model_->backend();
    const int64_t n = static_cast<int64_t>(rows.size());
    Tensor idx = be.Upload(rows.data(), DType::kI64, {n}, DType::kI64);
    Tensor out = be.Empty(src.dtype, {n, src.dim(1)});
    be.GatherRows(src, idx, out);
    return out;
  }

  Qwen35Model* model_;
  Tensor pending_;  // [slots, H]: each sequence's last real target hidden state
};

}  // namespace

StatusOr<std::unique_ptr<Drafter>> MakeMtpDrafter(Qwen35Model* target, int max_seqs, int64_t max_ctx, int max_k) {
  if (target->mtp_head() == nullptr) {
    return FailedPrecondition("drafter 'mtp' needs the model's MTP head (mtp.*), which is not loaded");
  }
  CacheOptions co;
  co.num_slots = max_seqs;
  co.max_ctx = max_ctx;
  co.log_capacity = std::max(1, max_k);
  SPECD_ASSIGN_OR_RETURN(auto cache, target->NewMtpCache(co));
  return std::unique_ptr<Drafter>(new MtpDrafter(target, std::move(cache)));
}

}  // namespace specd
