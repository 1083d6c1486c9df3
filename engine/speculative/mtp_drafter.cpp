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
//
// Prefix entries (docs/prefix-cache.md): the head's state after the target consumed n tokens is
// its KV rows [0, n - 1) and h_{n-1}. A saved state shares the full KV blocks (refcounted in the
// head cache's pool, which ReservePrefixStates grows by the store's budget), copies a partial last
// block, and copies h_{n-1} into a row of its own; a restored sequence continues exactly as if the
// head had observed the prefix itself.
#include <algorithm>
#include <unordered_map>

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
  bool keeps_prefix_state() const override { return true; }

  Status ReservePrefixStates(int64_t rows, int entries) override {
    if (!seqs_.empty()) return FailedPrecondition("mtp: prefix states reserved with sequences running");
    if (rows < 0 || entries < 1) return InvalidArgument("mtp: prefix states for {} rows in {} entries", rows, entries);
    CacheOptions co = cache_->options();
    const int64_t B = co.kv_block_size;
    // The full blocks of `rows` rows, and one copied partial block per entry.
    state_budget_ = (rows + B - 1) / B + entries;
    co.kv_blocks = cache_->kv_blocks_total() + state_budget_;
    // The old cache goes first, so that the two never take memory at the same time (the memory
    // plan counts one); no sequence holds it (checked above).
    cache_.reset();
    SPECD_ASSIGN_OR_RETURN(cache_, model_->NewMtpCache(co));
    Backend& be = *model_->backend();
    try {
      saved_hidden_ = be.Alloc(be.act_dtype(), {entries, model_->config().hidden_size});
    } catch (const std::bad_alloc&) {
      return ResourceExhausted("not enough {} memory for {} MTP prefix states", be.name(), entries);
    }
    free_rows_.clear();
    for (int r = entries - 1; r >= 0; --r) free_rows_.push_back(r);
    return Status::Ok();
  }

  int64_t prefix_state_bytes() const override {
    return saved_hidden_.defined() ? saved_hidden_.nbytes() + state_budget_ * cache_->kv_block_bytes() : 0;
  }

  std::shared_ptr<void> SavePrefix(int seq_id, int64_t len) override {
    auto it = seqs_.find(seq_id);
    if (it == seqs_.end() || free_rows_.empty()) return nullptr;
    const MtpSeq& s = it->second;
    const int64_t rows = len - 1;
    if (rows < 0 || !s.has_pending || cache_->logging(s.slot) || cache_->length(s.slot) != rows) return nullptr;
    const int64_t B = cache_->kv_block_size(), nb = (rows + B - 1) / B;
    const bool partial = rows % B != 0;
    std::vector<int32_t> blocks = cache_->kv_blocks(s.slot);
    if (static_cast<int64_t>(blocks.size()) < nb) return nullptr;
    blocks.resize(static_cast<size_t>(nb));
    int64_t fresh = partial ? 1 : 0;
    for (int64_t j = 0; j < nb - (partial ? 1 : 0); ++j) fresh += held_.count(blocks[j]) == 0;
    if (held_blocks_ + fresh > state_budget_) return nullptr;  // the pool keeps every slot's room
    // Owned from here on: a throw below releases what it holds.
    auto st = std::make_shared<State>(this, rows);
    for (int64_t j = 0; j < nb - (partial ? 1 : 0); ++j) {
      Hold(blocks[j]);
      st->blocks.push_back(blocks[j]);
    }
    if (partial) {
      auto copy = cache_->CopyBlock(blocks.back());  // its writer goes on writing the original
      if (!copy.ok()) return nullptr;
      ++held_[*copy];  // CopyBlock's reference is the state's
      ++held_blocks_;
      st->blocks.push_back(*copy);
    }
    Backend& be = *model_->backend();
    st->hidden_row = free_rows_.back();
    free_rows_.pop_back();
    Tensor dst = saved_hidden_.Rows(st->hidden_row, 1);
    be.CopyRows(pending_.Rows(s.slot, 1), dst);
    return st;
  }

  Status RestorePrefix(int seq_id, const std::shared_ptr<void>& state, int64_t len) override {
    auto it = seqs_.find(seq_id);
    if (it == seqs_.end()) return Internal("mtp: unknown sequence {}", seq_id);
    MtpSeq& s = it->second;
    // The store hands back only states this drafter saved (it keys them by their owner).
    const auto* st = static_cast<const State*>(state.get());
    if (st == nullptr || st->owner != this || st->rows != len - 1 || st->hidden_row < 0) {
      return InvalidArgument("mtp: no head state for a prefix of {} tokens", len);
    }
    if (s.has_pending || cache_->length(s.slot) != 0) {
      return FailedPrecondition("mtp: sequence {} is not empty (head row {})", seq_id, cache_->length(s.slot));
    }
    if (st->rows > 0) SPECD_RETURN_IF_ERROR(cache_->AdoptKvPrefix(s.slot, st->blocks, st->rows));
    try {
      Backend& be = *model_->backend();
      Tensor dst = pending_.Rows(s.slot, 1);
      be.CopyRows(saved_hidden_.Rows(st->hidden_row, 1), dst);
    } catch (...) {
      cache_->ResetSlot(s.slot);
      throw;
    }
    s.has_pending = true;
    return Status::Ok();
  }

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

  // A saved head state (SavePrefix): its blocks (shared full ones, then its own copy of a partial
  // one) and its row of saved_hidden_, returned to the drafter when the store lets go of it.
  struct State {
    State(MtpDrafter* o, int64_t r) : owner(o), rows(r) {}
    ~State() {
      for (int32_t b : blocks) owner->Drop(b);
      if (hidden_row >= 0) owner->free_rows_.push_back(hidden_row);
    }
    MtpDrafter* owner;
    int64_t rows;
    std::vector<int32_t> blocks;
    int hidden_row = -1;
  };

  // One pool reference per distinct block the states hold (like the prefix store's).
  void Hold(int32_t b) {
    if (++held_[b] == 1) {
      cache_->RefBlock(b);
      ++held_blocks_;
    }
  }
  void Drop(int32_t b) {
    auto it = held_.find(b);
    if (it == held_.end()) return;
    if (--it->second == 0) {
      held_.erase(it);
      cache_->UnrefBlock(b);
      --held_blocks_;
    }
  }

  Qwen35Model* model_;
  Tensor pending_;  // [slots, H]: each sequence's last real target hidden state
  // Prefix states (ReservePrefixStates): h_{n-1} of each, the free rows, the blocks they hold.
  Tensor saved_hidden_;
  std::vector<int> free_rows_;
  std::unordered_map<int32_t, int> held_;
  int64_t held_blocks_ = 0, state_budget_ = 0;
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
