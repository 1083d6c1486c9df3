// Drafters propose up to k next tokens for each sequence; the target verifies them. A drafter
// that keeps model state (draft model, MTP head) rolls it back in Accept().
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/tensor.h"
#include "speculative/sampling.h"
#include "util/status.h"

namespace specd {

class ModelCache;

struct DraftRequest {
  int seq_id = 0;
  // Everything the sequence holds: prompt + generated tokens; its last token (t0) is the one the
  // target has not consumed yet.
  const std::vector<int32_t>* context = nullptr;
  int k = 0;
  const SamplingParams* sampling = nullptr;
};

struct DraftProposal {
  std::vector<int32_t> tokens;                // 0..k drafts
  std::vector<std::vector<float>> probs;      // q_i per draft, or empty (one-hot proposals)
};

struct DraftOutcome {
  int seq_id = 0;
  int proposed = 0;
  int accepted = 0;
};

// What a step's target forward computed for one sequence that goes on: positions [pos0, pos0 +
// kept) of its context are now consumed by the target (a prefill chunk: the whole chunk; a
// verify: t0 and the accepted drafts), and their final-normed hidden states are rows [row0, row0
// + kept) of the step's hidden tensor. `context` already holds the tokens emitted in the step.
struct TargetRows {
  int seq_id = 0;
  int64_t pos0 = 0;
  int64_t kept = 0;
  int64_t row0 = 0;
  const std::vector<int32_t>* context = nullptr;
};

class Drafter {
 public:
  virtual ~Drafter() = default;
  virtual std::string name() const = 0;
  virtual Status AddSequence(int seq_id) = 0;
  virtual void RemoveSequence(int seq_id) = 0;
  // One proposal per request, in order; all requests are handled in one batched pass.
  virtual Status Propose(const std::vector<DraftRequest>& reqs, std::vector<DraftProposal>& out) = 0;
  // After the verify: `accepted` of `proposed` drafts were kept.
  virtual Status Accept(const std::vector<DraftOutcome>& outcomes) = 0;

  // A drafter that reads the target's hidden states (MTP) says so: the engine then has the target
  // keep them (Qwen35Model::set_keep_hidden) and, after every step's Accept, shows it what the
  // step's forward computed for the sequences that go on (`hidden`: [tokens of the step, H]).
  virtual bool reads_target_hidden() const { return false; }
  virtual Status ObserveTarget(const Tensor& hidden, const std::vector<TargetRows>& rows) {
    (void)hidden;
    (void)rows;
    return Status::Ok();
  }

  // ---- The prefix store (docs/prefix-cache.md) ----
  // A drafter whose own state follows what the target consumed (the MTP head: its KV rows and the
  // pending hidden row) keeps a companion state with each prefix entry its sequences store, so
  // its requests can start from a stored prefix too. Drafters that keep none (n-gram; the draft
  // model recomputes its prefix) look up and store only the target's part.
  virtual bool keeps_prefix_state() const { return false; }
  // Room for the states of a store of up to `entries` entries over up to `rows` KV rows; called
  // once by the engine, before any sequence.
  virtual Status ReservePrefixStates(int64_t rows, int entries) {
    (void)rows;
    (void)entries;
    return Status::Ok();
  }
  // Bytes ReservePrefixStates set aside.
  virtual int64_t prefix_state_bytes() const { return 0; }
  // The sequence's state now, which must be the one after the target consumed `len` tokens;
  // null when it is not, or there is no room (the entry then has no state of this drafter).
  virtual std::shared_ptr<void> SavePrefix(int seq_id, int64_t len) {
    (void)seq_id;
    (void)len;
    return nullptr;
  }
  // A sequence that has consumed nothing yet takes a saved state (of `len` target tokens); on
  // failure it stays empty.
  virtual Status RestorePrefix(int seq_id, const std::shared_ptr<void>& state, int64_t len) {
    (void)seq_id;
    (void)state;
    (void)len;
    return Unimplemented("drafter {} keeps no prefix state", name());
  }

  // For tests that check the drafter's own state after rollback: its cache and a sequence's slot
  // (nullptr / -1 for stateless drafters).
  virtual ModelCache* state_cache() { return nullptr; }
  virtual int slot_of(int seq_id) const { return -1; }
};

class Qwen35Model;

struct NgramOptions {
  int max_n = 4;  // longest suffix n-gram matched
  int min_n = 1;
};
std::unique_ptr<Drafter> MakeNgramDrafter(const NgramOptions& opt = {});

// A draft model with its own cache slots; vocab must equal the target's.
StatusOr<std::unique_ptr<Drafter>> MakeDraftModelDrafter(Qwen35Model* draft, int64_t target_vocab,
                                                         int max_seqs, int64_t max_ctx, int max_k);

// The target's own MTP head (Qwen35Model::LoadMtpHead first; docs/mtp.md): k chained head steps
// per verify, fed the target's final-normed hidden states, the head's KV cache rolled back to the
// rows computed from real target states after every verify.
StatusOr<std::unique_ptr<Drafter>> MakeMtpDrafter(Qwen35Model* target, int max_seqs, int64_t max_ctx, int max_k);

// The drafters the daemon and the CLI offer, by name, in one place: "none" (plain decoding:
// returns nullptr), "ngram" (prompt lookup), "draft" (the draft model `draft`, required), "mtp"
// (the target's MTP head, loaded). kInvalidArgument for any other name.
Status CheckDrafterName(std::string_view name);
StatusOr<std::unique_ptr<Drafter>> MakeDrafter(std::string_view name, Qwen35Model* target, Qwen35Model* draft,
                                               int max_seqs, int64_t max_ctx, int max_k);

}  // namespace specd
