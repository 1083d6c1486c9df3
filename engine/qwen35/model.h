// The Qwen3.5 forward, written once against the Backend op set, over a flattened
// variable-length batch in which every sequence has its own cache slot and its own mode
// (prefill chunk, single decode token, k+1-token verify, draft step).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "cache/model_cache.h"
#include "checkpoint/config.h"
#include "qwen35/graph_padding.h"
#include "qwen35/weights.h"
#include "runtime/backend.h"
#include "specd/limits.h"

namespace specd {

struct SeqInput {
  int slot = 0;
  std::vector<int32_t> tokens;
  StateMode mode = StateMode::kUpdate;
  bool all_logits = false;
};

struct ForwardOutput {
  Tensor logits;              // [rows, V] on the backend, rows in input order
  std::vector<int64_t> row0;  // first logits row of each input sequence
  std::vector<int64_t> rows;  // number of rows of each input sequence (len or 1)
};

class Qwen35Model {
 public:
  // Loads config.json + safetensors weights from `dir` (FP8 checkpoints included; `opt` can
  // quantize a float one to FP8 at load, and applies to the MTP head loaded later too).
  static StatusOr<std::unique_ptr<Qwen35Model>> Load(const std::string& dir, Backend* backend,
                                                     const LoadOptions& opt = {});
  // A model with random weights (benchmarks at real shapes).
  static std::unique_ptr<Qwen35Model> Random(const ModelConfig& cfg, Backend* backend, uint64_t seed);

  ~Qwen35Model();
  Qwen35Model(const Qwen35Model&) = delete;
  Qwen35Model& operator=(const Qwen35Model&) = delete;

  // Loads and checks the checkpoint's MTP head (mtp.*) from `dir` (the folder the model came
  // from): kNotFound when it has none, an error naming a missing or mis-shaped tensor.
  Status LoadMtpHead(const std::string& dir);
  const MtpWeights* mtp_head() const { return mtp_ ? &*mtp_ : nullptr; }
  // A random head of the model's shapes (benchmarks at real sizes).
  void RandomMtpHead(uint64_t seed) { SetMtpHead(RandomMtpWeights(cfg_, backend_, seed)); }
  // Restricts the head's draft logits to `ids` (sorted, distinct; speculative/draft_vocab.h): the
  // head then reads only those rows of the lm_head, and its logits column j is token ids[j].
  // Empty: the full vocabulary again.
  Status SetMtpVocab(std::vector<int32_t> ids);
  const std::vector<int32_t>& mtp_vocab() const { return mtp_vocab_; }

  const ModelConfig& config() const { return cfg_; }
  Backend* backend() const { return backend_; }
  int64_t weight_bytes() const { return w_.bytes; }
  // Backbone weights that are FP8 values (stored so, or rounded by LoadOptions::quantize_fp8).
  int fp8_tensors() const { return w_.fp8_tensors; }

  StatusOr<std::unique_ptr<ModelCache>> NewCache(const CacheOptions& opt) const {
    return ModelCache::Create(cfg_, backend_, opt);
  }

  // One forward over all `seqs`; validates ids, slots, capacities and modes first, so a bad
  // request changes no state. The device running out of memory is ResourceExhausted (then the
  // slots of `seqs` may be half-updated: the caller drops those sequences).
  StatusOr<ForwardOutput> Forward(const std::vector<SeqInput>& seqs, ModelCache& cache);

  // The MTP head's forward (docs/mtp.md; LoadMtpHead first). Row r of a sequence pairs the token
  // x_{t+1} (`seqs[i].tokens[r]`) with `hidden` row (the target's final-normed hidden state h_t, or
  // for a chained draft step the head's own previous output), at the next position of the
  // sequence's slot in `mtp_cache` (NewMtpCache: the head's own KV cache, rolled back like the
  // target's). Returns the draft logits and the head's normed output (what a chained step feeds
  // back) for the rows the inputs ask for. Spans of up to kMaxGraphTokens run as graphs where the
  // backend captures them (the hidden rows are copied into one fixed input buffer first).
  struct MtpOutput {
    ForwardOutput logits;  // as Forward's
    Tensor hidden;         // [rows, H]: mtp.norm(output), same rows as the logits
  };
  // want_logits = false only fills the head's cache (rows whose outputs nothing reads): no
  // lm_head, empty logits and hidden.
  StatusOr<MtpOutput> MtpForward(const std::vector<SeqInput>& seqs, const Tensor& hidden, ModelCache& mtp_cache,
                                 bool want_logits = true);
  // The MTP head's cache: one full-attention layer, the same options as the target's.
  StatusOr<std::unique_ptr<ModelCache>> NewMtpCache(const CacheOptions& opt) const;
  // The target's final-normed hidden states of every token of the last forward, in input order
  // ([num_tokens, H]; what the MTP head reads), kept only when keep_hidden is set.
  void set_keep_hidden(bool on) { keep_hidden_ = on; }
  const Tensor& last_hidden() const { return last_hidden_; }

  // Padding of short batches to graph shapes (qwen35/graph_padding.h): kAuto where the backend
  // captures graphs; kAlways / kNever for tests and A/B runs.
  enum class GraphPaddingMode { kAuto, kAlways, kNever };
  void set_graph_padding(GraphPaddingMode m) { padding_ = m; }

 private:
  Qwen35Model(ModelConfig cfg, ModelWeights w, Backend* be);
  void SetMtpHead(MtpWeights m);
  // A validated batch (Forward and MtpForward): spans, ids, logit rows; KV rows reserved.
  struct PreparedBatch {
    BatchInfo b;
    std::vector<int32_t> ids;
    ForwardOutput out;
    std::vector<int64_t> logit_rows;
  };
  StatusOr<PreparedBatch> PrepareBatch(const std::vector<SeqInput>& seqs, ModelCache& cache) const;
  // normed == nullptr: the cache rows only (the attention's K/V writes; nothing after it runs);
  // returns an empty tensor.
  Tensor MtpOps(const BatchInfo& b, const Tensor& tok, const Tensor& hidden, const Tensor& rows, int64_t R,
                ModelCache& cache, Tensor* normed);
  // Spans of at most this many tokens (decode, verify, draft steps) run as captured graphs.
  static constexpr int64_t kMaxGraphTokens = kMaxVerifySpan;
  std::string GraphKey(const BatchInfo& b, int64_t rows, const ModelCache& cache) const;
  void AddDummySpans(const GraphPadding& plan, const ModelCache& cache, BatchInfo& b, std::vector<int32_t>& ids,
                     std::vector<int64_t>& logit_rows) const;
  // Whether a batch of this shape (spans up to kMaxGraphTokens; MoE that routes on the device)
  // can be captured, with `tokens` tokens.
  bool Capturable(const BatchInfo& b, int64_t tokens) const;
  // Pads a capturable batch to a graph shape with dummy spans on the cache's pad slot (where the
  // backend captures graphs, or padding is forced).
  void PadForGraph(const ModelCache& cache, BatchInfo& b, std::vector<int32_t>& ids,
                   std::vector<int64_t>& logit_rows) const;
  // Replays the graph `key` (empty: no graph), captures it around `ops`, or runs `ops`; returns
  // the outputs `ops` names. Throws std::bad_alloc when the device is full outside a capture.
  StatusOr<std::vector<Tensor>> RunGraphed(const std::string& key, const std::function<std::vector<Tensor>()>& ops);
  // Replays the batch's graph, captures it, or runs the ops (throws std::bad_alloc when the
  // device is full outside a capture).
  StatusOr<Tensor> RunGraphOrOps(const BatchInfo& b, const std::vector<int32_t>& ids,
                                 const std::vector<int64_t>& logit_rows, ModelCache& cache, bool graphable);
  Tensor RunOps(const BatchInfo& b, const Tensor& tok, const Tensor& rows, int64_t R, ModelCache& cache);
  void GdnLayer(const LayerWeights& L, GdnLayerState& st, const Tensor& a, const BatchInfo& b, Tensor& out);
  void AttnLayer(const LayerWeights& L, AttnLayerState& st, const Tensor& a, const BatchInfo& b, Tensor& out);
  void Ffn(const LayerWeights& L, const Tensor& m, Tensor& out);

  ModelConfig cfg_;
  ModelWeights w_;
  std::optional<MtpWeights> mtp_;
  bool keep_hidden_ = false;
  Tensor mtp_in_;  // the MTP graphs' hidden input rows (fixed address; grows, dropping those graphs)
  std::vector<int32_t> mtp_vocab_;  // the reduced draft vocabulary (empty: all tokens)
  LoadOptions load_options_;  // how the weights were loaded (the MTP head loads the same way)
  Tensor mtp_lm_head_;              // its lm_head rows [ids, H]
  Tensor last_hidden_;
  Backend* backend_;
  uint64_t id_;
  GraphPaddingMode padding_ = GraphPaddingMode::kAuto;
};

}  // namespace specd
