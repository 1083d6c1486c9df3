// The bookkeeping of the drafters that keep model state (draft model, MTP head): one slot of their
// own cache per sequence, `Seq` being what each keeps beside its slot (it has an `int slot`).
#pragma once

#include <map>
#include <memory>

#include "cache/model_cache.h"
#include "speculative/drafter.h"

namespace specd {

template <typename Seq>
class SlotDrafter : public Drafter {
 public:
  Status AddSequence(int seq_id) override {
    SPECD_ASSIGN_OR_RETURN(int slot, cache_->AllocSlot());
    Seq s{};
    s.slot = slot;
    seqs_[seq_id] = s;
    return Status::Ok();
  }
  void RemoveSequence(int seq_id) override {
    auto it = seqs_.find(seq_id);
    if (it == seqs_.end()) return;
    cache_->FreeSlot(it->second.slot);
    seqs_.erase(it);
  }
  ModelCache* state_cache() override { return cache_.get(); }
  int slot_of(int seq_id) const override {
    auto it = seqs_.find(seq_id);
    return it == seqs_.end() ? -1 : it->second.slot;
  }

 protected:
  explicit SlotDrafter(std::unique_ptr<ModelCache> cache) : cache_(std::move(cache)) {}
  std::unique_ptr<ModelCache> cache_;
  std::map<int, Seq> seqs_;
};

}  // namespace specd
