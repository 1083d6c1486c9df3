// SpeculativeEngine: continuous batching over the speculative step. Each Step() runs ONE target forward
// over every active sequence — prefill chunks of new ones, and [t0, d1..dk] verify spans of
// running ones — then verifies, commits the accepted prefix and rolls back the drafter.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "cache/model_cache.h"
#include "cache/prefix_store.h"
#include "qwen35/model.h"
#include "specd/limits.h"
#include "speculative/drafter.h"
#include "speculative/sampling.h"
#include "speculative/stats.h"

namespace specd {

enum class FinishReason { kNone, kLength, kEos, kStop, kAborted };
const char* FinishReasonName(FinishReason r);

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int max_tokens = 16;
  int min_tokens = 0;
  bool ignore_eos = false;
  std::vector<int32_t> stop_ids;
  int k = -1;               // drafts per step; -1 = the engine's default
  bool adaptive_k = false;  // choose k per step from the running acceptance
  // Which of the engine's drafters proposes for this sequence, by Drafter::name(): "" = the
  // engine's default (its first), "none" = plain decoding (k = 0, no drafter slot taken).
  std::string drafter;
  bool prefix_cache = true;  // may reuse (and stores) prompt prefixes when the engine has a prefix store
};

struct EngineOptions {
  int max_seqs = 8;
  int64_t max_ctx = 4096;
  int default_k = 4;
  int max_k = kMaxDraftTokens;
  int64_t prefill_chunk = 512;        // prompt tokens per sequence per step
  int64_t max_prefill_tokens = 2048;  // prompt tokens per step, all sequences together
  // KV rows the target's paged pool holds for all sequences together (0: max_seqs x max_ctx,
  // every slot at full context). A request is admitted only when its prompt + max_tokens + k + 1
  // rows fit beside the other admitted requests' reservations, so no sequence runs out of blocks
  // mid-generation; Add says Unavailable (retry later) otherwise.
  int64_t kv_cache_tokens = 0;
  std::vector<int32_t> eos_ids;  // from the target's config
  // Adaptive k: cost of one extra drafted+verified token relative to a plain decode step.
  double adaptive_token_cost = 0.1;
  // Greedy sequences take their tokens from the backend's ArgmaxRows and copy only ids to the
  // host; the others copy just their own logits rows. false = every row through the host path
  // (the reference: full logits download, ProcessedProbs, Verify). Tokens are identical.
  bool device_token_choice = true;
  // Prefix cache (cache/prefix_store.h, docs/prefix-cache.md): 0 entries = off. The store's KV
  // blocks come on top of the requests' pool (prefix_cache_tokens rows; 0 = 4 x max_ctx), so
  // admission never competes with it. Prompt chunks are cut at multiples of the interval, and the
  // state after every prompt chunk and at every request's end is stored.
  int prefix_cache_entries = 0;
  int64_t prefix_cache_tokens = 0;
  int64_t prefix_cache_interval = 128;
  // One budget instead (> 0, with entries > 0: entries is then the most it may keep): the
  // snapshots, the KV rows and the drafters' states together take at most this many bytes, split
  // so that each entry has an interval's worth of KV rows of its own and the rest goes to KV rows.
  int64_t prefix_cache_bytes = 0;
};

// Bytes of one prefix entry's GDN snapshot (every GDN layer's conv window and recurrent state),
// and of one token's KV rows over the attention layers, for a model on a backend of `act` dtype.
int64_t PrefixSnapshotBytes(const ModelConfig& cfg, DType act);
int64_t KvBytesPerToken(const ModelConfig& cfg, DType act);
// Turns prefix_cache_bytes (> 0, with entries > 0) into entries and tokens, and clears it; `head`:
// a drafter keeps its own part of each entry (the MTP head). kInvalidArgument when the budget
// holds no entry. SpeculativeEngine::Create calls it; a server calls it first to report the plan.
Status ResolvePrefixCacheBudget(EngineOptions& o, const ModelConfig& cfg, DType act, bool head);

class SpeculativeEngine {
 public:
  // `drafter` may be null (plain decoding).
  static StatusOr<std::unique_ptr<SpeculativeEngine>> Create(Qwen35Model* target, std::unique_ptr<Drafter> drafter,
                                                      const EngineOptions& opt);
  // Several drafters side by side (names distinct), each request choosing one
  // (GenerationRequest::drafter); the first is the default. Empty: plain decoding.
  static StatusOr<std::unique_ptr<SpeculativeEngine>> Create(Qwen35Model* target,
                                                      std::vector<std::unique_ptr<Drafter>> drafters,
                                                      const EngineOptions& opt);

  // Validates and queues a request; it starts prefilling at the next Step().
  StatusOr<int> Add(GenerationRequest req);
  // One batched step over every unfinished sequence. ResourceExhausted when the device ran out
  // of memory: the sequences of the step may be half-advanced and must be dropped (Release).
  Status Step();
  bool HasWork() const;

  bool Finished(int id) const;
  FinishReason Reason(int id) const;
  const std::vector<int32_t>& Generated(int id) const;
  const SpeculativeStats& Stats(int id) const;
  // Prompt tokens the sequence took from the prefix store instead of computing them.
  int64_t CachedTokens(int id) const { return seqs_.at(id).cached_tokens; }
  PrefixStore* prefix_store() { return prefix_.get(); }
  // Forgets the sequence (aborting it if it still runs) and frees its slots.
  void Release(int id);

  int slots_in_use() const { return cache_->slots_in_use(); }
  // KV blocks of the target's pool: reserved by admitted requests, and in all.
  int64_t kv_blocks_reserved() const { return kv_reserved_; }
  int64_t kv_blocks_total() const { return kv_request_blocks_; }
  int active() const;
  const EngineOptions& options() const { return opt_; }
  // The default drafter (null: none), and any by name (null: not served).
  Drafter* drafter() { return drafters_.empty() ? nullptr : drafters_.front().get(); }
  Drafter* drafter(std::string_view name);
  // The names of the drafters, default first.
  std::vector<std::string> drafter_names() const;
  Backend* backend() const { return target_->backend(); }
  // What the prefix cache reserved at creation: snapshots, its KV blocks, the drafters' states.
  int64_t prefix_cache_reserved_bytes() const;
  ModelCache& target_cache() { return *cache_; }
  int target_slot(int id) const { return seqs_.at(id).slot; }
  // Logits rows copied to the host so far (the device token choice copies none for greedy).
  int64_t host_logits_rows() const { return host_logits_rows_; }

 private:
  struct Seq {
    int slot = -1;
    Drafter* drafter = nullptr;  // one of drafters_, or null (plain decoding)
    GenerationRequest req;
    std::vector<int32_t> context;  // prompt + generated; the last token is pending in decode
    std::vector<int32_t> generated;
    int64_t prefilled = 0;
    bool decoding = false;
    FinishReason reason = FinishReason::kNone;
    SpeculativeStats stats;
    double alpha = 0.6;  // running per-draft acceptance, for adaptive k
    int probe = 0;
    int64_t kv_reserved = 0;  // KV blocks reserved at admission, returned when it finishes
    int64_t cached_tokens = 0;  // prompt tokens restored from the prefix store
    int64_t cut_at = 0;         // a prefill chunk ends here: where the prompt left the store's known prefixes
  };
  // What the token choice of one step reads: with the backend's token choice, one (token,
  // accept) per logits row; otherwise a host copy of every row for the host path.
  struct TokenRows {
    bool on_device = false;
    std::vector<TokenChoice> choice;  // per logits row, on the device path
    std::vector<int64_t> first;       // fo.row0
    std::vector<float> all;           // every row, on the host path
    float* Row(size_t input, int64_t j, int64_t V) { return all.data() + (first[input] + j) * V; }
  };
  SpeculativeEngine() = default;
  Status RunStep();
  void StorePrefix(int id, const Seq& s, const std::vector<int32_t>& tokens, int64_t len,
                   const float* last_logits = nullptr);
  Status ProposeByDrafter(const std::vector<int>& decode_ids, const std::vector<DraftRequest>& dreq,
                          std::vector<DraftProposal>& props);
  StatusOr<TokenRows> FetchTokenRows(ForwardOutput& fo, const std::vector<int>& prefilling,
                                     const std::vector<int64_t>& chunk_len, const std::vector<int>& decode_ids,
                                     const std::vector<DraftProposal>& props);
  int ChooseK(Seq& s) const;
  // The ids min_tokens masks in the row that produces generated token `gen_index` (none once
  // min_tokens tokens exist): eos ids (unless ignore_eos) and stop ids.
  std::vector<int32_t> MaskedIds(const Seq& s, int64_t gen_index) const;
  void MaskForMinTokens(const Seq& s, int64_t gen_index, float* logits) const;
  // Appends a token; returns true when the sequence finished with it.
  bool Emit(Seq& s, int32_t tok);
  void Finish(int id, Seq& s, FinishReason r);

  Qwen35Model* target_ = nullptr;
  std::vector<std::unique_ptr<Drafter>> drafters_;
  std::unique_ptr<ModelCache> cache_;
  // After cache_ and drafters_: released first, it holds the cache's blocks and the drafters' states.
  std::unique_ptr<PrefixStore> prefix_;
  int64_t kv_request_blocks_ = 0;        // the pool's blocks that requests reserve (the rest: the store's)
  EngineOptions opt_;
  std::map<int, Seq> seqs_;
  int next_id_ = 0;
  int64_t host_logits_rows_ = 0;
  int64_t kv_reserved_ = 0;  // blocks reserved by unfinished sequences
};

}  // namespace specd
