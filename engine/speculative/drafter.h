// Drafters propose up to k next tokens for each sequence; the target verifies them. A drafter
// that keeps model state (draft model, later the MTP head) rolls it back in Accept().
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

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

// The drafters the daemon and the CLI offer, by name, in one place: "none" (plain decoding:
// returns nullptr), "ngram" (prompt lookup), "draft" (the draft model `draft`, required).
// kInvalidArgument for any other name.
Status CheckDrafterName(std::string_view name);
StatusOr<std::unique_ptr<Drafter>> MakeDrafter(std::string_view name, Qwen35Model* draft, int64_t target_vocab,
                                               int max_seqs, int64_t max_ctx, int max_k);

}  // namespace specd
