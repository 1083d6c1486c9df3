#include "speculative/engine.h"

#include <algorithm>
#include <cmath>

#include <fmt/ranges.h>

#include "speculative/verifier.h"

namespace specd {

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "none";
    case FinishReason::kLength: return "length";
    case FinishReason::kEos: return "eos";
    case FinishReason::kStop: return "stop";
    case FinishReason::kAborted: return "abort";
  }
  return "none";
}

StatusOr<std::unique_ptr<SpeculativeEngine>> SpeculativeEngine::Create(Qwen35Model* target, std::unique_ptr<Drafter> drafter,
                                                         const EngineOptions& opt) {
  std::vector<std::unique_ptr<Drafter>> drafters;
  if (drafter) drafters.push_back(std::move(drafter));
  return Create(target, std::move(drafters), opt);
}

StatusOr<std::unique_ptr<SpeculativeEngine>> SpeculativeEngine::Create(Qwen35Model* target,
                                                         std::vector<std::unique_ptr<Drafter>> drafters,
                                                         const EngineOptions& opt) {
  std::erase_if(drafters, [](const auto& d) { return d == nullptr; });
  for (size_t i = 0; i < drafters.size(); ++i) {
    const std::string n = drafters[i]->name();
    if (n.empty() || n == "none") return InvalidArgument("a drafter may not be named '{}'", n);
    for (size_t j = 0; j < i; ++j) {
      if (drafters[j]->name() == n) return InvalidArgument("two drafters are named '{}'", n);
    }
  }
  if (opt.max_k < 0 || opt.max_k > kMaxDraftTokens) {
    return InvalidArgument("max_k must be in [0, {}] (got {})", kMaxDraftTokens, opt.max_k);
  }
  if (opt.default_k < 0 || opt.default_k > opt.max_k) {
    return InvalidArgument("k must be in [0, {}] (got {})", opt.max_k, opt.default_k);
  }
  if (opt.prefill_chunk <= 0) return InvalidArgument("prefill chunk must be positive");
  if (opt.max_prefill_tokens <= 0) return InvalidArgument("max prefill tokens per step must be positive");
  auto e = std::unique_ptr<SpeculativeEngine>(new SpeculativeEngine());
  e->target_ = target;
  e->drafters_ = std::move(drafters);
  e->opt_ = opt;
  if (e->opt_.eos_ids.empty()) e->opt_.eos_ids = target->config().eos_token_ids;
  CacheOptions co;
  co.num_slots = opt.max_seqs;
  co.max_ctx = opt.max_ctx;
  co.log_capacity = opt.max_k + 1;
  if (opt.kv_cache_tokens < 0) return InvalidArgument("KV cache tokens must be >= 0 (got {})", opt.kv_cache_tokens);
  const int64_t B = co.kv_block_size;
  e->kv_request_blocks_ = opt.kv_cache_tokens > 0 ? (opt.kv_cache_tokens + B - 1) / B
                                                  : (opt.max_ctx + B - 1) / B * opt.max_seqs;
  int64_t store_blocks = 0;
  if (opt.prefix_cache_entries < 0 || opt.prefix_cache_tokens < 0 || opt.prefix_cache_interval <= 0 ||
      opt.prefix_cache_bytes < 0) {
    return InvalidArgument("prefix cache: entries, tokens and bytes must be >= 0 and the interval positive");
  }
  {
    bool head = false;
    for (const auto& d : e->drafters_) head = head || d->keeps_prefix_state();
    SPECD_RETURN_IF_ERROR(ResolvePrefixCacheBudget(e->opt_, target->config(), target->backend()->act_dtype(), head));
  }
  if (e->opt_.prefix_cache_entries > 0) {
    const int64_t rows = e->opt_.prefix_cache_tokens > 0 ? e->opt_.prefix_cache_tokens : 4 * opt.max_ctx;
    store_blocks = (rows + B - 1) / B;
  }
  co.kv_blocks = e->kv_request_blocks_ + store_blocks;
  SPECD_ASSIGN_OR_RETURN(e->cache_, target->NewCache(co));
  if (e->opt_.prefix_cache_entries > 0) {
    const int entries = e->opt_.prefix_cache_entries;
    SPECD_ASSIGN_OR_RETURN(e->prefix_, PrefixStore::Create(e->cache_.get(), {entries, store_blocks}));
    // A drafter with state of its own (the MTP head) keeps it beside each entry: room for as many.
    for (const auto& d : e->drafters_) {
      if (d->keeps_prefix_state()) SPECD_RETURN_IF_ERROR(d->ReservePrefixStates(store_blocks * B, entries));
    }
  }
  // The MTP head reads the target's hidden states; the target keeps them only when asked (a
  // graph then has them as a second output).
  for (const auto& d : e->drafters_) {
    if (d->reads_target_hidden()) target->set_keep_hidden(true);
  }
  return e;
}

int64_t SpeculativeEngine::prefix_cache_reserved_bytes() const {
  if (!prefix_) return 0;
  int64_t n = prefix_->pool_bytes() + prefix_->options().max_blocks * cache_->kv_block_bytes();
  for (const auto& d : drafters_) n += d->prefix_state_bytes();
  return n;
}

Drafter* SpeculativeEngine::drafter(std::string_view name) {
  for (const auto& d : drafters_) {
    if (d->name() == name) return d.get();
  }
  return nullptr;
}

std::vector<std::string> SpeculativeEngine::drafter_names() const {
  std::vector<std::string> names;
  for (const auto& d : drafters_) names.push_back(d->name());
  return names;
}

StatusOr<int> SpeculativeEngine::Add(GenerationRequest req) {
  const int64_t V = target_->config().vocab_size;
  if (req.prompt.empty()) return InvalidArgument("empty prompt");
  for (int32_t t : req.prompt) {
    if (t < 0 || t >= V) return InvalidArgument("prompt token id {} is out of the vocabulary [0, {})", t, V);
  }
  for (int32_t t : req.stop_ids) {
    if (t < 0 || t >= V) return InvalidArgument("stop token id {} is out of the vocabulary [0, {})", t, V);
  }
  SPECD_RETURN_IF_ERROR(ValidateSampling(req.sampling));
  if (req.max_tokens < 1) return InvalidArgument("max_tokens must be >= 1 (got {})", req.max_tokens);
  if (req.min_tokens < 0 || req.min_tokens > req.max_tokens) {
    return InvalidArgument("min_tokens must be in [0, max_tokens] (got {})", req.min_tokens);
  }
  if (req.k < -1 || req.k > opt_.max_k) return InvalidArgument("k must be in [0, {}] (got {})", opt_.max_k, req.k);
  Drafter* drafter = nullptr;
  if (req.drafter.empty()) {
    drafter = this->drafter();
  } else if (req.drafter != "none") {
    drafter = this->drafter(req.drafter);
    if (!drafter) {
      return InvalidArgument("drafter '{}' is not served here (served: {}; or 'none')", req.drafter,
                             drafters_.empty() ? std::string("none") : fmt::format("{}", fmt::join(drafter_names(), ", ")));
    }
  }
  if (req.k == -1) req.k = opt_.default_k;
  if (!drafter) {
    req.k = 0;
    req.adaptive_k = false;
  }
  const int64_t need = static_cast<int64_t>(req.prompt.size()) + req.max_tokens;
  if (need > opt_.max_ctx) {
    return InvalidArgument("prompt ({} tokens) + max_tokens ({}) exceed the context length {}",
                           req.prompt.size(), req.max_tokens, opt_.max_ctx);
  }
  // KV blocks for every row the sequence can write: prompt, max_tokens and a verify's tail.
  const int64_t B = cache_->kv_block_size();
  const int64_t rows = std::min(need + req.k + 1, cache_->kv_blocks_max_per_slot() * B);
  const int64_t blocks = (rows + B - 1) / B;
  if (blocks > kv_request_blocks_) {
    return InvalidArgument("prompt ({} tokens) + max_tokens ({}) need {} KV rows; this server's KV cache holds {}",
                           req.prompt.size(), req.max_tokens, rows, kv_request_blocks_ * B);
  }
  if (kv_reserved_ + blocks > kv_request_blocks_) {
    return Status(StatusCode::kUnavailable,
                  fmt::format("KV cache full: {} blocks needed, {} of {} reserved by running requests", blocks,
                              kv_reserved_, kv_request_blocks_));
  }
  SPECD_ASSIGN_OR_RETURN(int slot, cache_->AllocSlot());
  const int id = next_id_++;
  if (drafter) {
    Status st = drafter->AddSequence(id);
    if (!st.ok()) {
      cache_->FreeSlot(slot);
      return st;
    }
  }
  Seq s;
  // The longest stored prefix of the prompt, short of its last token (whose logits the first
  // generated token needs), or the whole prompt stored with those logits. A drafter with state of
  // its own (the MTP head) needs an entry that carries its part too; one that reads the target's
  // hidden rows but keeps no such state cannot start from a prefix at all.
  std::vector<float> first_logits;  // a whole-prompt hit: position P - 1's logits
  const bool own_state = drafter && drafter->keeps_prefix_state();
  if (prefix_ && req.prefix_cache && (own_state || !(drafter && drafter->reads_target_hidden()))) {
    // A failed restore leaves the slots empty (the store is optional: a miss, never an error).
    bool restored = false;
    try {
      const PrefixStore::Hit hit = prefix_->Lookup(req.prompt, static_cast<int64_t>(req.prompt.size()) - 1,
                                                   /*whole=*/true, own_state ? drafter : nullptr);
      s.cut_at = hit.shared;
      if (hit.length > 0 && prefix_->Restore(hit, slot).ok() &&
          (!own_state || drafter->RestorePrefix(id, hit.companion, hit.length).ok())) {
        restored = true;
        if (hit.logits) first_logits = *hit.logits;
        s.prefilled = hit.length;
        s.cached_tokens = hit.length;
      }
    } catch (const std::exception&) {
      restored = false;
    }
    if (!restored && cache_->length(slot) > 0) {
      first_logits.clear();
      s.prefilled = s.cached_tokens = 0;
      cache_->ResetSlot(slot);
    }
  }
  s.slot = slot;
  s.drafter = drafter;
  s.kv_reserved = blocks;
  kv_reserved_ += blocks;
  s.context = req.prompt;
  s.req = std::move(req);
  Seq& added = seqs_.emplace(id, std::move(s)).first->second;
  if (!first_logits.empty()) {
    // The whole prompt came from the store: its first token is chosen from the stored logits on
    // the host path (the same choice the device path makes, tests/unit/token_choice_test.cpp).
    added.decoding = true;
    const int64_t P = static_cast<int64_t>(added.req.prompt.size());
    MaskForMinTokens(added, 0, first_logits.data());
    std::vector<float> p;
    ProcessedProbs(first_logits.data(), V, added.req.sampling, p);
    if (Emit(added, SampleToken(p, added.req.sampling, P))) Finish(id, added, added.reason);
  }
  return id;
}

bool SpeculativeEngine::HasWork() const {
  for (const auto& [id, s] : seqs_) {
    if (s.reason == FinishReason::kNone) return true;
  }
  return false;
}

int SpeculativeEngine::active() const {
  int n = 0;
  for (const auto& [id, s] : seqs_) n += s.reason == FinishReason::kNone;
  return n;
}

bool SpeculativeEngine::Finished(int id) const { return seqs_.at(id).reason != FinishReason::kNone; }
FinishReason SpeculativeEngine::Reason(int id) const { return seqs_.at(id).reason; }
const std::vector<int32_t>& SpeculativeEngine::Generated(int id) const { return seqs_.at(id).generated; }
const SpeculativeStats& SpeculativeEngine::Stats(int id) const { return seqs_.at(id).stats; }

void SpeculativeEngine::Finish(int id, Seq& s, FinishReason r) {
  s.reason = r;
  kv_reserved_ -= s.kv_reserved;
  s.kv_reserved = 0;
  if (s.slot >= 0) {
    // What the sequence consumed is a prefix the next turn of a chat starts with.
    if (prefix_ && s.req.prefix_cache && !cache_->logging(s.slot) && cache_->length(s.slot) > 0) {
      StorePrefix(id, s, s.context, cache_->length(s.slot));
    }
    cache_->FreeSlot(s.slot);
  }
  s.slot = -1;
  if (s.drafter) s.drafter->RemoveSequence(id);
}

void SpeculativeEngine::Release(int id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  if (it->second.reason == FinishReason::kNone) Finish(id, it->second, FinishReason::kAborted);
  seqs_.erase(it);
}

int SpeculativeEngine::ChooseK(Seq& s) const {
  const int remaining = s.req.max_tokens - static_cast<int>(s.generated.size());
  // Never draft past the last token the request may emit, nor past the context.
  const int64_t room = opt_.max_ctx - static_cast<int64_t>(s.context.size());
  int kmax = std::min<int64_t>({s.req.k, remaining - 1, room});
  kmax = std::max(kmax, 0);
  if (!s.req.adaptive_k || kmax == 0) return kmax;
  // Expected tokens per step with per-draft acceptance a: (1 - a^{k+1}) / (1 - a); cost 1 + c·k.
  const double a = std::clamp(s.alpha, 0.0, 0.999), c = opt_.adaptive_token_cost;
  int best = 0;
  double best_v = 1.0;
  for (int k = 1; k <= kmax; ++k) {
    const double v = (1.0 - std::pow(a, k + 1)) / (1.0 - a) / (1.0 + c * k);
    if (v > best_v) {
      best_v = v;
      best = k;
    }
  }
  // A sequence parked at k = 0 probes with one draft every 16 steps, so it can recover.
  if (best == 0 && ++s.probe % 16 == 0) best = 1;
  return best;
}

std::vector<int32_t> SpeculativeEngine::MaskedIds(const Seq& s, int64_t gen_index) const {
  std::vector<int32_t> ids;
  if (gen_index >= s.req.min_tokens) return ids;
  if (!s.req.ignore_eos) {
    for (int32_t e : opt_.eos_ids) {
      if (e >= 0 && e < target_->config().vocab_size) ids.push_back(e);
    }
  }
  ids.insert(ids.end(), s.req.stop_ids.begin(), s.req.stop_ids.end());
  return ids;
}

void SpeculativeEngine::MaskForMinTokens(const Seq& s, int64_t gen_index, float* logits) const {
  for (int32_t e : MaskedIds(s, gen_index)) logits[e] = -INFINITY;
}

bool SpeculativeEngine::Emit(Seq& s, int32_t tok) {
  s.generated.push_back(tok);
  s.context.push_back(tok);
  const int64_t n = static_cast<int64_t>(s.generated.size());
  if (!s.req.ignore_eos && std::find(opt_.eos_ids.begin(), opt_.eos_ids.end(), tok) != opt_.eos_ids.end()) {
    s.reason = FinishReason::kEos;
  } else if (std::find(s.req.stop_ids.begin(), s.req.stop_ids.end(), tok) != s.req.stop_ids.end()) {
    s.reason = FinishReason::kStop;
  } else if (n >= s.req.max_tokens) {
    s.reason = FinishReason::kLength;
  }
  return s.reason != FinishReason::kNone;
}

StatusOr<SpeculativeEngine::TokenRows> SpeculativeEngine::FetchTokenRows(ForwardOutput& fo, const std::vector<int>& prefilling,
                                                           const std::vector<int64_t>& chunk_len,
                                                           const std::vector<int>& decode_ids,
                                                           const std::vector<DraftProposal>& props) {
  Backend* be = target_->backend();
  TokenRows tr;
  tr.first.assign(fo.row0.begin(), fo.row0.end());
  tr.on_device = opt_.device_token_choice;
  if (!tr.on_device) {
    tr.all = be->DownloadF32(fo.logits);
    host_logits_rows_ += fo.logits.dim(0);
    SPECD_RETURN_IF_ERROR(be->TakeError());
    return tr;
  }
  const int64_t R = fo.logits.dim(0), V = target_->config().vocab_size;
  std::vector<TokenRowSpec> spec(static_cast<size_t>(R));
  // The min_tokens mask per row, as an I32 [R, M] table padded with -1.
  std::vector<std::vector<int32_t>> masked(static_cast<size_t>(R));
  size_t M = 0;
  // Draft distributions of rejection-mode verify rows, uploaded as q [Q, V].
  std::vector<const std::vector<float>*> q_rows;
  auto fill = [&](const Seq& s, int64_t row, int64_t gen_index, int64_t position) -> TokenRowSpec& {
    TokenRowSpec& t = spec[static_cast<size_t>(row)];
    t = RowSpecOf(s.req.sampling, position);
    auto& m = masked[static_cast<size_t>(row)];
    m = MaskedIds(s, gen_index);
    M = std::max(M, m.size());
    return t;
  };
  for (size_t i = 0; i < prefilling.size(); ++i) {
    const Seq& s = seqs_.at(prefilling[i]);
    const int64_t P = static_cast<int64_t>(s.req.prompt.size());
    if (s.prefilled + chunk_len[i] >= P) fill(s, fo.row0[i], 0, P);  // the first generated token
  }
  for (size_t i = 0; i < decode_ids.size(); ++i) {
    const Seq& s = seqs_.at(decode_ids[i]);
    const size_t r = prefilling.size() + i;
    const auto& d = props[i].tokens;
    const auto& q = props[i].probs;
    const int64_t gen0 = static_cast<int64_t>(s.generated.size()), pos = static_cast<int64_t>(s.context.size());
    for (size_t j = 0; j <= d.size(); ++j) {
      TokenRowSpec& t = fill(s, fo.row0[r] + static_cast<int64_t>(j), gen0 + static_cast<int64_t>(j),
                             pos + static_cast<int64_t>(j));
      if (j == d.size()) break;  // the bonus row: a plain draw
      t.draft = d[j];
      t.index = static_cast<int32_t>(j) + 1;
      if (q.size() == d.size() && !t.greedy() && !t.coupled) {
        if (static_cast<int64_t>(q[j].size()) != V) return Internal("draft distribution of size {}", q[j].size());
        t.q_row = static_cast<int32_t>(q_rows.size());
        q_rows.push_back(&q[j]);
      }
    }
  }
  if (M > 0) {
    std::vector<int32_t> ban(static_cast<size_t>(R) * M, -1);
    for (size_t r = 0; r < masked.size(); ++r) std::copy(masked[r].begin(), masked[r].end(), ban.begin() + r * M);
    Tensor t = be->Upload(ban.data(), DType::kI32, {R, static_cast<int64_t>(M)}, DType::kI32);
    be->MaskIds(fo.logits, t);
  }
  Tensor q;
  if (!q_rows.empty()) {
    std::vector<float> flat;
    flat.reserve(q_rows.size() * static_cast<size_t>(V));
    for (const auto* row : q_rows) flat.insert(flat.end(), row->begin(), row->end());
    q = be->Upload(flat.data(), DType::kF32, {static_cast<int64_t>(q_rows.size()), V}, DType::kF32);
  }
  Tensor out = be->Empty(DType::kI32, {R, 2});
  be->ChooseTokens(fo.logits, spec, q, out);
  SPECD_RETURN_IF_ERROR(be->TakeError());
  const std::vector<int32_t> flat = be->DownloadI32(out);
  SPECD_RETURN_IF_ERROR(be->TakeError());
  tr.choice.resize(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) tr.choice[r] = TokenChoice{flat[2 * r], flat[2 * r + 1]};
  return tr;
}

Status SpeculativeEngine::Step() {
  // The error model (engine/util/status.h): the runtime's ops throw, the engine answers with a
  // status, here. A full device (std::bad_alloc) is kResourceExhausted; anything else thrown
  // under a step (an op whose contract was broken, a drafter's exception) is a bug, kInternal.
  // Either way what the step had issued may have changed its sequences' state, so the caller
  // fails them and rebuilds the engine (the batcher does).
  Backend* be = target_->backend();
  try {
    Status st = RunStep();
    // An asynchronous backend error left behind by a path that returned early is this step's.
    Status sticky = be->TakeError();
    return st.ok() ? sticky : st;
  } catch (const std::bad_alloc&) {
    be->ReleaseCachedMemory();
    (void)be->TakeError();
    return ResourceExhausted("{} memory exhausted during a step of {} sequences", be->name(), active());
  } catch (const std::exception& e) {
    (void)be->TakeError();
    return Internal("a step of {} sequences failed: {}", active(), e.what());
  }
}

// The prefix store is an optimisation: failing to store (an error, or memory) loses the entry,
// never a request or a step. The sequence's drafter adds its own part when it keeps one and the
// entry lacks it (an entry stored by another drafter's request gains it here).
void SpeculativeEngine::StorePrefix(int id, const Seq& s, const std::vector<int32_t>& tokens, int64_t len,
                                    const float* last_logits) {
  try {
    if (!prefix_->Insert(tokens, len, s.slot, last_logits, last_logits ? target_->config().vocab_size : 0).ok()) return;
    if (s.drafter && s.drafter->keeps_prefix_state() && prefix_->Lacks(tokens, len, s.drafter)) {
      if (std::shared_ptr<void> st = s.drafter->SavePrefix(id, len)) {
        (void)prefix_->Attach(tokens, len, s.drafter, std::move(st));
      }
    }
  } catch (const std::exception&) {
  }
}

// One batched Propose per drafter over its own sequences; proposals land at their request's index.
Status SpeculativeEngine::ProposeByDrafter(const std::vector<int>& decode_ids, const std::vector<DraftRequest>& dreq,
                                           std::vector<DraftProposal>& props) {
  for (const auto& d : drafters_) {
    std::vector<DraftRequest> mine;
    std::vector<size_t> at;
    for (size_t i = 0; i < decode_ids.size(); ++i) {
      if (seqs_[decode_ids[i]].drafter != d.get()) continue;
      mine.push_back(dreq[i]);
      at.push_back(i);
    }
    if (mine.empty()) continue;
    std::vector<DraftProposal> got(mine.size());
    SPECD_RETURN_IF_ERROR(d->Propose(mine, got));
    for (size_t j = 0; j < at.size(); ++j) props[at[j]] = std::move(got[j]);
  }
  return Status::Ok();
}

Status SpeculativeEngine::RunStep() {
  const int64_t V = target_->config().vocab_size;
  std::vector<int> prefill_ids, decode_ids;
  for (auto& [id, s] : seqs_) {
    if (s.reason != FinishReason::kNone) continue;
    (s.decoding ? decode_ids : prefill_ids).push_back(id);
  }
  if (prefill_ids.empty() && decode_ids.empty()) return Status::Ok();

  // ---- drafts for the decoding sequences (one batched drafter pass) ----
  std::vector<DraftRequest> dreq;
  std::vector<int> dk(decode_ids.size());
  for (size_t i = 0; i < decode_ids.size(); ++i) {
    Seq& s = seqs_[decode_ids[i]];
    dk[i] = ChooseK(s);
    dreq.push_back(DraftRequest{decode_ids[i], &s.context, dk[i], &s.req.sampling});
  }
  std::vector<DraftProposal> props(decode_ids.size());
  SPECD_RETURN_IF_ERROR(ProposeByDrafter(decode_ids, dreq, props));

  // ---- ONE target forward: prefill chunks + verify spans ----
  // Prompt tokens per step are capped in total (oldest requests first), so a burst of new
  // prompts cannot stall the running streams for one huge step.
  std::vector<SeqInput> in;
  std::vector<int> prefilling;
  std::vector<int64_t> chunk_len;
  int64_t budget = opt_.max_prefill_tokens;
  for (int id : prefill_ids) {
    if (budget <= 0) break;
    Seq& s = seqs_[id];
    const int64_t P = static_cast<int64_t>(s.req.prompt.size());
    int64_t len = std::min({P - s.prefilled, opt_.prefill_chunk, budget});
    if (prefix_ && s.req.prefix_cache) {
      // A chunk that crosses an interval multiple ends at the last one it crosses: every chunk
      // end is stored, so a prompt sharing only part of this one still finds a prefix.
      const int64_t I = opt_.prefix_cache_interval, end = s.prefilled + len;
      if (end % I != 0 && end / I * I > s.prefilled) len = end / I * I - s.prefilled;
      // And at the token where the prompt left every stored prefix: the entry stored there is
      // exactly the part this prompt shares with an earlier one (a system prompt, say), which
      // the next prompt that shares it finds whole.
      if (s.cut_at > s.prefilled && s.cut_at < s.prefilled + len) len = s.cut_at - s.prefilled;
    }
    budget -= len;
    prefilling.push_back(id);
    chunk_len.push_back(len);
    in.push_back(SeqInput{s.slot, {s.req.prompt.begin() + s.prefilled, s.req.prompt.begin() + s.prefilled + len},
                          StateMode::kUpdate, false});
  }
  for (size_t i = 0; i < decode_ids.size(); ++i) {
    Seq& s = seqs_[decode_ids[i]];
    auto& d = props[i].tokens;
    if (static_cast<int>(d.size()) > dk[i]) d.resize(dk[i]);
    std::vector<int32_t> toks{s.context.back()};
    toks.insert(toks.end(), d.begin(), d.end());
    if (d.empty()) {
      in.push_back(SeqInput{s.slot, std::move(toks), StateMode::kUpdate, false});
    } else {
      SPECD_RETURN_IF_ERROR(cache_->BeginLog(s.slot, false));
      in.push_back(SeqInput{s.slot, std::move(toks), StateMode::kLog, true});
    }
  }
  SPECD_ASSIGN_OR_RETURN(ForwardOutput fo, target_->Forward(in, *cache_));
  // Where each input's tokens sit among the forward's hidden rows (for a drafter that reads them).
  std::vector<int64_t> tok0(in.size());
  for (size_t i = 1; i < in.size(); ++i) tok0[i] = tok0[i - 1] + static_cast<int64_t>(in[i - 1].tokens.size());
  std::vector<TargetRows> seen;
  // The last logits of each prompt that ends in this step, for the prefix store, copied before the
  // token choice (which may process the rows in place).
  std::vector<std::vector<float>> end_logits(prefilling.size());
  if (prefix_) {
    for (size_t i = 0; i < prefilling.size(); ++i) {
      const Seq& s = seqs_[prefilling[i]];
      if (s.req.prefix_cache && s.prefilled + chunk_len[i] == static_cast<int64_t>(s.req.prompt.size())) {
        end_logits[i] = target_->backend()->DownloadF32(fo.logits.Rows(fo.row0[i], 1));
      }
    }
  }
  SPECD_ASSIGN_OR_RETURN(TokenRows tr, FetchTokenRows(fo, prefilling, chunk_len, decode_ids, props));

  size_t row = 0;
  for (size_t i = 0; i < prefilling.size(); ++i) {
    const int id = prefilling[i];
    Seq& s = seqs_[id];
    const int64_t P = static_cast<int64_t>(s.req.prompt.size());
    s.prefilled += chunk_len[i];
    const size_t r = row++;
    seen.push_back(TargetRows{id, s.prefilled - chunk_len[i], chunk_len[i], tok0[r], &s.context});
    if (s.prefilled < P) continue;
    // The prompt is in: its last logits give the first generated token (position P).
    s.decoding = true;
    int32_t tok = 0;
    if (tr.on_device) {
      tok = tr.choice[fo.row0[r]].token;
    } else {
      float* l = tr.Row(r, 0, V);
      MaskForMinTokens(s, 0, l);
      std::vector<float> p;
      ProcessedProbs(l, V, s.req.sampling, p);
      tok = SampleToken(p, s.req.sampling, P);
    }
    Emit(s, tok);  // a sequence done here finishes at the end of the step
  }
  std::vector<DraftOutcome> outcomes;
  for (size_t i = 0; i < decode_ids.size(); ++i) {
    const int id = decode_ids[i];
    Seq& s = seqs_[id];
    const size_t r = row++;
    const auto& d = props[i].tokens;
    const int k = static_cast<int>(d.size());
    const int64_t n_gen = static_cast<int64_t>(s.generated.size());
    const int64_t pos = static_cast<int64_t>(s.context.size());  // position of d1
    VerifyResult vr;
    if (tr.on_device) {
      vr = VerifyFromChoices(tr.choice.data() + fo.row0[r], k);
    } else {
      std::vector<std::vector<float>> P(static_cast<size_t>(k + 1));
      for (int j = 0; j <= k; ++j) {
        float* l = tr.Row(r, j, V);
        MaskForMinTokens(s, n_gen + j, l);
        ProcessedProbs(l, V, s.req.sampling, P[j]);
      }
      const auto& q = props[i].probs;
      VerifyInput vi{&P, &d, q.size() == d.size() ? &q : nullptr, &s.req.sampling, pos};
      vr = Verify(vi);
    }
    if (k > 0) SPECD_RETURN_IF_ERROR(cache_->Commit(s.slot, vr.accepted + 1));
    s.stats.Record(k, vr.accepted);
    if (k > 0) s.alpha = 0.8 * s.alpha + 0.2 * static_cast<double>(vr.accepted) / k;
    outcomes.push_back(DraftOutcome{id, k, vr.accepted});
    seen.push_back(TargetRows{id, pos - 1, vr.accepted + 1, tok0[r], &s.context});
    bool done = false;
    for (int j = 0; j < vr.accepted && !done; ++j) done = Emit(s, d[j]);
    if (!done) Emit(s, vr.next);
  }
  // Finished sequences free their slots only after the drafter has seen their outcome.
  for (const auto& d : drafters_) {
    std::vector<DraftOutcome> mine;
    for (const DraftOutcome& o : outcomes) {
      if (seqs_[o.seq_id].drafter == d.get()) mine.push_back(o);
    }
    if (!mine.empty()) SPECD_RETURN_IF_ERROR(d->Accept(mine));
  }
  // After Accept (which dropped the drafter's speculative rows): the rows of the sequences that
  // go on, their emitted tokens included; and of those that finished when the prefix store will
  // keep what they consumed with their drafter's state (which must then have seen all of it).
  std::erase_if(seen, [&](const TargetRows& t) {
    const Seq& s = seqs_[t.seq_id];
    if (s.reason == FinishReason::kNone) return false;
    return !(prefix_ && s.req.prefix_cache && s.drafter && s.drafter->keeps_prefix_state() &&
             t.pos0 + t.kept <= static_cast<int64_t>(s.context.size()));
  });
  for (const auto& d : drafters_) {
    if (!d->reads_target_hidden()) continue;
    std::vector<TargetRows> mine;
    for (const TargetRows& t : seen) {
      if (seqs_[t.seq_id].drafter == d.get()) mine.push_back(t);
    }
    if (mine.empty()) continue;
    // The rows are this forward's: one per input token (a stale tensor would pair wrong rows).
    const int64_t tokens = tok0.back() + static_cast<int64_t>(in.back().tokens.size());
    if (!target_->last_hidden().defined() || target_->last_hidden().dim(0) != tokens) {
      return Internal("the target kept no hidden rows, or not one per token, for a forward of {} tokens", tokens);
    }
    SPECD_RETURN_IF_ERROR(d->ObserveTarget(target_->last_hidden(), mine));
  }
  // The prefix store, after every drafter saw the step: each chunk end, and each prompt's end with
  // its last logits (a later identical prompt computes nothing); the slots hold exactly that.
  if (prefix_) {
    for (size_t i = 0; i < prefilling.size(); ++i) {
      Seq& s = seqs_[prefilling[i]];
      if (!s.req.prefix_cache) continue;
      const int64_t P = static_cast<int64_t>(s.req.prompt.size());
      StorePrefix(prefilling[i], s, s.req.prompt, s.prefilled, s.prefilled == P && !end_logits[i].empty()
                                                                  ? end_logits[i].data() : nullptr);
    }
  }
  for (const std::vector<int>* ids : {&prefilling, &decode_ids}) {
    for (int id : *ids) {
      Seq& s = seqs_[id];
      if (s.reason != FinishReason::kNone && s.slot >= 0) Finish(id, s, s.reason);
    }
  }
  return Status::Ok();
}

int64_t PrefixSnapshotBytes(const ModelConfig& cfg, DType act) {
  const GdnDims d{cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_key_head_dim,
                  cfg.linear_value_head_dim, cfg.linear_conv_kernel_dim};
  int64_t gdn = 0;
  for (LayerType t : cfg.layer_types) gdn += t == LayerType::kLinearAttention;
  // As ModelCache holds them: the conv window in the activation dtype, the recurrent state in fp32.
  const int64_t conv = int64_t{d.conv_kernel} * d.conv_dim() * static_cast<int64_t>(DTypeSize(act));
  const int64_t rec = int64_t{d.num_v_heads} * d.head_k * d.head_v * 4;
  return gdn * (conv + rec);
}

int64_t KvBytesPerToken(const ModelConfig& cfg, DType act) {
  int64_t attn = 0;
  for (LayerType t : cfg.layer_types) attn += t == LayerType::kFullAttention;
  return attn * 2 * int64_t{cfg.num_key_value_heads} * cfg.head_dim * static_cast<int64_t>(DTypeSize(act));
}

Status ResolvePrefixCacheBudget(EngineOptions& o, const ModelConfig& cfg, DType act, bool head) {
  if (o.prefix_cache_entries <= 0 || o.prefix_cache_bytes <= 0) return Status::Ok();
  if (o.prefix_cache_interval <= 0) return InvalidArgument("prefix cache: the interval must be positive");
  // Each entry costs its snapshot, the head's part (its pending row and a copied partial KV
  // block) and an interval of KV rows (the target's, and the head's); the rest is KV rows.
  const int64_t B = CacheOptions{}.kv_block_size, act_size = static_cast<int64_t>(DTypeSize(act));
  const int64_t head_row = head ? 2 * int64_t{cfg.num_key_value_heads} * cfg.head_dim * act_size : 0;
  const int64_t row = KvBytesPerToken(cfg, act) + head_row;
  const int64_t fixed = PrefixSnapshotBytes(cfg, act) + (head ? cfg.hidden_size * act_size + B * head_row : 0);
  const int64_t per_entry = fixed + o.prefix_cache_interval * row;
  const int64_t n = std::min<int64_t>(o.prefix_cache_bytes / per_entry, o.prefix_cache_entries);
  if (n < 1) {
    return InvalidArgument("prefix cache: {} bytes hold no entry (one takes {}: {} bytes of state and {} tokens of {} bytes)",
                           o.prefix_cache_bytes, per_entry, fixed, o.prefix_cache_interval, row);
  }
  o.prefix_cache_entries = static_cast<int>(n);
  // Whole blocks only, so the pool's share stays within the budget.
  o.prefix_cache_tokens = std::max<int64_t>((o.prefix_cache_bytes - n * fixed) / row / B * B, B);
  o.prefix_cache_bytes = 0;  // resolved
  return Status::Ok();
}

}  // namespace specd
