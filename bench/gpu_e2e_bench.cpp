// End-to-end speculative decoding on the GPU (issue "performance", end-to-end item), on
// random-weight models with Qwen3.5-0.8B and 9B shapes:
//   (a) plain greedy decode tokens/s through the engine (128 new tokens after a 128-token prompt);
//   (b) greedy speculation with the acceptance-controlled drafter (engine/speculative/acceptance_drafter.h)
//       at alpha = 0.8, k = 4, its references being run (a)'s outputs: tokens/s, measured
//       per-draft acceptance, tokens per verify step;
//   (c) the floor-based ideal: E = (1 - alpha^{k+1}) / (1 - alpha) tokens per step over the time
//       of one verify step at its floor (weights streamed once + the GDN state read and written
//       once per sequence, at the copy bandwidth measured here), and measured / ideal;
//   (d) (a)-(c) at batch 8 and 32 (all sequences in one batched step);
//   (e) the speculative scratch (replay log) of a 9B target at k = 8, batch 32, GPU layout;
//   (f) drafters at their real cost, 9B target, batch 1, k = 1..3, alpha = 0.8: a 0.8B-shaped
//       draft model, the MTP head (full vocabulary, and a reduced one of kMtpVocab ids), each run
//       in full with its drafts replaced by the acceptance drafter's
//       (speculative/controlled_drafter.h), beside the free oracle and plain decoding.
// Every timed run repeats an identical untimed run first on the same engine, so CUDA graphs are
// captured before the clock starts. Random weights: no real drafter would ever be accepted,
// which is why acceptance is set by the drafter, not measured from one.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "checkpoint/presets.h"
#include "qwen35/model.h"
#include "runtime/backend.h"
#include "speculative/acceptance_drafter.h"
#include "speculative/controlled_drafter.h"
#include "speculative/engine.h"
#include "gpu_bench_util.h"

using namespace specd;
using specd::bench::CheckCuda;
using specd::bench::CopyBandwidth;
using specd::bench::Now;

namespace {

constexpr int kPrompt = 128;
constexpr int kNewTokens = 128;
constexpr int kK = 4;
constexpr double kAlpha = 0.8;
constexpr int kMtpVocab = 32768;  // the reduced MTP draft vocabulary of (f)

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "gpu_e2e_bench: %s\n", what.c_str());
  std::exit(1);
}

// Distinct prompts for `n` sequences, ids spread over the vocabulary.
std::vector<std::vector<int32_t>> Prompts(int n, int64_t V) {
  std::vector<std::vector<int32_t>> p(n, std::vector<int32_t>(kPrompt));
  for (int b = 0; b < n; ++b) {
    for (int i = 0; i < kPrompt; ++i) p[b][i] = static_cast<int32_t>((i * 7919LL + b * 104729LL + 13) % V);
  }
  return p;
}

struct Run {
  std::vector<std::vector<int32_t>> outputs;
  double seconds = 0;   // decode phases: from every sequence's first token to the round's last token
  int64_t tokens = 0;   // tokens generated in those phases, all sequences
  int64_t steps = 0;    // engine steps in those phases
  SpeculativeStats stats;      // merged over sequences
  double alpha = 0;     // measured per-draft acceptance (acceptance drafter only)
  int64_t trials = 0;
  int diverged = 0;
  double tok_s() const { return static_cast<double>(tokens) / seconds; }
  double step_ms() const { return seconds / static_cast<double>(steps) * 1e3; }
};

// Runs `prompts` through one engine in rounds of `batch` sequences that all decode together
// (several rounds at small batch, so a figure averages over more steps). All rounds run twice
// on the same engine and slots and only the second pass is timed: the passes are identical
// (greedy, counter-based drafts), so every CUDA graph is captured before the clock starts.
// `refs` null: plain greedy (k = 0); else greedy speculation at k with the acceptance drafter
// replaying `refs` (prompt + continuation per sequence), alone (`real` empty) or in place of the
// drafts of the drafter `real` makes, which runs in full (ControlledDrafter).
using MakeReal = std::function<std::unique_ptr<Drafter>(int max_seqs, int64_t max_ctx, int max_k)>;
Run RunBatch(Qwen35Model& m, int batch, const std::vector<std::vector<int32_t>>& prompts,
             const std::vector<std::vector<int32_t>>* refs, int k = kK, const MakeReal& real = {}) {
  EngineOptions o;
  o.max_seqs = batch;
  o.max_ctx = kPrompt + kNewTokens + 8;
  o.default_k = refs ? k : 0;
  o.max_k = std::max(k, 1);
  o.prefill_chunk = kPrompt;
  o.max_prefill_tokens = static_cast<int64_t>(batch) * kPrompt;  // every prompt in the first step
  const AcceptanceDrafter* drafter = nullptr;
  std::unique_ptr<Drafter> owned;
  if (refs) {
    auto d = AcceptanceDrafter::Create(*refs, {kAlpha, 2024, m.config().vocab_size});
    if (!d.ok()) Die(d.status().ToString());
    drafter = d->get();
    owned = std::move(d).value();
    if (real) {
      std::unique_ptr<AcceptanceDrafter> oracle(static_cast<AcceptanceDrafter*>(owned.release()));
      owned = std::make_unique<ControlledDrafter>(real(batch, o.max_ctx, o.max_k), std::move(oracle));
    }
  }
  auto eo = SpeculativeEngine::Create(&m, std::move(owned), o);
  if (!eo.ok()) Die(eo.status().ToString());
  SpeculativeEngine& e = **eo;
  const int rounds = static_cast<int>(prompts.size()) / batch;
  Run run;
  int64_t trials0 = 0, kept0 = 0;
  int div0 = 0;
  for (int it = 0; it < 2 * rounds; ++it) {  // pass 0 (warm-up) then pass 1 (timed), each all rounds
    const bool warmup = it < rounds;
    const int first = (it % rounds) * batch;
    if (it == rounds && drafter) {
      trials0 = drafter->looked_at();
      kept0 = drafter->kept();
      div0 = drafter->diverged();
    }
    std::vector<int> ids;
    for (int i = first; i < first + batch; ++i) {
      GenerationRequest q;
      q.prompt = prompts[i];
      q.max_tokens = kNewTokens;
      q.ignore_eos = true;
      auto id = e.Add(q);
      if (!id.ok()) Die(id.status().ToString());
      ids.push_back(*id);
    }
    auto step = [&] {
      Status st = e.Step();
      if (!st.ok()) Die("engine step: " + st.ToString());
    };
    auto generated = [&] {
      int64_t n = 0;
      for (int id : ids) n += static_cast<int64_t>(e.Generated(id).size());
      return n;
    };
    // Prefill, untimed: one step feeds every prompt and emits each sequence's first token.
    while (std::any_of(ids.begin(), ids.end(), [&](int id) { return e.Generated(id).empty(); })) step();
    const int64_t tok0 = generated();
    int64_t steps = 0;
    const double t0 = Now();
    while (e.HasWork()) {
      step();
      ++steps;
    }
    const double t1 = Now();
    if (!warmup) {
      run.seconds += t1 - t0;
      run.tokens += generated() - tok0;
      run.steps += steps;
    }
    for (int id : ids) {
      if (!warmup) {
        run.outputs.push_back(e.Generated(id));
        run.stats.Merge(e.Stats(id));
      }
      e.Release(id);
    }
  }
  if (drafter) {
    run.trials = drafter->looked_at() - trials0;
    run.alpha = run.trials ? static_cast<double>(drafter->kept() - kept0) / static_cast<double>(run.trials) : 0;
    run.diverged = drafter->diverged() - div0;
  }
  return run;
}

std::vector<std::vector<int32_t>> Concat(const std::vector<std::vector<int32_t>>& a,
                                         const std::vector<std::vector<int32_t>>& b) {
  auto out = a;
  for (size_t i = 0; i < out.size(); ++i) out[i].insert(out[i].end(), b[i].begin(), b[i].end());
  return out;
}

int Mismatches(const std::vector<std::vector<int32_t>>& a, const std::vector<std::vector<int32_t>>& b) {
  int n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += a[i] != b[i];
  return n;
}

struct Row {
  std::string model;
  int batch = 0;
  Run plain, spec;
  double floor_ms = 0;  // one verify step at its floor
  int retries = 0;
  int equal_plain = 0;  // sequences whose speculative output equals the plain greedy output
};

// Fills row.spec: speculation at k with the references being the target's own greedy
// continuations. If bf16 numerics of the verify spans differ from the plain decode's at a
// near-tie, the speculative output (itself the target's greedy output under verify numerics)
// becomes the next reference.
void Speculate(Qwen35Model& m, Row& row, const std::vector<std::vector<int32_t>>& prompts, int k,
               const MakeReal& real = {}) {
  auto refs = Concat(prompts, row.plain.outputs);
  row.retries = 0;
  for (;;) {
    row.spec = RunBatch(m, row.batch, prompts, &refs, k, real);
    const int bad = Mismatches(row.spec.outputs, row.plain.outputs);
    const int off = Mismatches(Concat(prompts, row.spec.outputs), refs);
    if (row.spec.diverged == 0 && off == 0) break;
    const bool again = ++row.retries < 3;
    std::printf("  note: batch %d: %d sequence(s) left their reference (%d differ from plain greedy); %s\n", row.batch,
                std::max(row.spec.diverged, off), bad,
                again ? "re-running with the speculative outputs as references"
                      : "giving up: the figures below include sequences that drafted nothing after leaving");
    if (!again) break;
    refs = Concat(prompts, row.spec.outputs);
  }
  row.equal_plain = static_cast<int>(prompts.size()) - Mismatches(row.spec.outputs, row.plain.outputs);
}

// (f): one drafter configuration at k, batch 1.
struct DrafterRow {
  std::string drafter;
  int k = 0;
  Row row;
};

}  // namespace

// `--smoke`: the same runs on the CPU backend with a tiny model, to check the program's logic on a
// machine without a GPU (its figures mean nothing).
int main(int argc, char** argv) {
  const bool smoke = argc > 1 && std::string(argv[1]) == "--smoke";
  if (argc > 2 || (argc == 2 && !smoke)) Die("usage: gpu_e2e_bench [--smoke]");
  const double t_start = Now();
  std::unique_ptr<Backend> owned_be;
  std::string device = "CPU (smoke run, figures meaningless)";
  double bw = 1e11;
  if (smoke) {
    owned_be = MakeCpuBackend();
  } else {
    auto bo = MakeBackend("cuda");
    if (!bo.ok()) Die(bo.status().ToString());
    owned_be = std::move(bo).value();
    cudaDeviceProp prop{};
    CheckCuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    device = fmt::format("{}, {} SMs", prop.name, prop.multiProcessorCount);
    bw = CopyBandwidth();
  }
  Backend& be = *owned_be;
  std::printf("device: %s; copy bandwidth (read+write) %.0f GB/s\n", device.c_str(), bw / 1e9);
  std::printf("setting: greedy, prompt %d tokens, %d new tokens per sequence, acceptance drafter alpha = %.2f, "
              "k = %d\n\n",
              kPrompt, kNewTokens, kAlpha, kK);
  std::fflush(stdout);
  const double E = (1 - std::pow(kAlpha, kK + 1)) / (1 - kAlpha);

  std::vector<Row> rows;
  std::vector<DrafterRow> drafter_rows;
  double scratch_mib = 0, scratch_slot_mib = 0;
  const std::vector<std::string> names = smoke ? std::vector<std::string>{"tiny"} : std::vector<std::string>{"0.8B", "9B"};
  for (const std::string& name_s : names) {
    const char* name = name_s.c_str();
    ModelConfig c = ReleasedShapes(smoke ? "0.8B" : name).value();
    if (smoke) {  // 4 layers (3 GDN + 1 attention), small widths and vocabulary
      c.hidden_size = 64;
      c.intermediate_size = 128;
      c.vocab_size = 1024;
      c.num_hidden_layers = 4;
      c.layer_types.resize(4);
      c.head_dim = 32;
      c.linear_num_key_heads = 2;
      c.linear_num_value_heads = 4;
      c.linear_key_head_dim = c.linear_value_head_dim = 16;
    }
    auto model = Qwen35Model::Random(c, &be, 7);
    Status st = be.TakeError();
    if (!st.ok()) Die(fmt::format("building the {} model: {}", name, st.ToString()));
    const double wbytes = static_cast<double>(model->weight_bytes());
    // A step reads every weight once, except the embedding table (a few rows) when untied.
    const double embed = static_cast<double>(c.vocab_size) * static_cast<double>(c.hidden_size) * 2;
    const double streamed = c.tie_word_embeddings ? wbytes : wbytes - embed;
    int n_gdn = 0;
    for (LayerType t : c.layer_types) n_gdn += t == LayerType::kLinearAttention;
    // fp32 recurrent state per sequence: read by the verify, written by the commit, at least.
    const double state = 4.0 * n_gdn * c.linear_num_value_heads * static_cast<double>(c.linear_key_head_dim) *
                         static_cast<double>(c.linear_value_head_dim);
    std::printf("Qwen3.5-%s shapes: weights %.2f GB (streamed per step %.2f GB), GDN state %.1f MiB per sequence\n",
                name, wbytes / 1e9, streamed / 1e9, state / 1048576.0);
    for (int B : {1, 8, 32}) {
      // Rounds: 4 at batch 1, 2 at batch 8, 1 at batch 32 (512, 2048, 4096 tokens timed).
      const int rounds = B == 1 ? 4 : B == 8 ? 2 : 1;
      const auto prompts = Prompts(B * rounds, c.vocab_size);
      Row row;
      row.model = name;
      row.batch = B;
      row.floor_ms = (streamed + 2.0 * state * B) / bw * 1e3;
      row.plain = RunBatch(*model, B, prompts, nullptr);
      Speculate(*model, row, prompts, kK);
      std::printf("  batch %2d: plain %.1f tok/s (%.2f ms/step); speculative %.1f tok/s (%.2f ms/step, %.2f tokens "
                  "per step, measured alpha %.3f over %lld drafts)\n",
                  B, row.plain.tok_s(), row.plain.step_ms(), row.spec.tok_s(), row.spec.step_ms(),
                  row.spec.stats.mean_acceptance_length(), row.spec.alpha, static_cast<long long>(row.spec.trials));
      std::fflush(stdout);
      rows.push_back(std::move(row));
    }
    if (name_s == "9B" || smoke) {
      // (e) the speculative scratch a 9B target holds at k = 8 (k + 1 logged tokens), batch 32.
      CacheOptions co;
      co.num_slots = 32;
      co.max_ctx = 256;
      co.log_capacity = 8 + 1;
      auto cache = model->NewCache(co);
      if (!cache.ok()) Die(cache.status().ToString());
      scratch_slot_mib = static_cast<double>((*cache)->scratch_bytes_per_slot()) / 1048576.0;
      scratch_mib = scratch_slot_mib * co.num_slots;

      // (f) drafters at their real cost, batch 1: a 0.8B-shaped draft model (the tiny config
      // itself in the smoke run), the MTP head with the full and a reduced vocabulary.
      ModelConfig dc = smoke ? c : ReleasedShapes("0.8B").value();
      dc.vocab_size = c.vocab_size;
      auto draft = Qwen35Model::Random(dc, &be, 9);
      model->RandomMtpHead(8);
      const auto prompts = Prompts(4, c.vocab_size);
      Row plain_row;
      plain_row.model = name;
      plain_row.batch = 1;
      model->set_keep_hidden(false);
      plain_row.plain = RunBatch(*model, 1, prompts, nullptr);
      Qwen35Model* target = model.get();
      const MakeReal draft_model = [&](int n, int64_t ctx, int k) {
        return std::move(MakeDraftModelDrafter(draft.get(), c.vocab_size, n, ctx, k)).value();
      };
      const MakeReal mtp = [&](int n, int64_t ctx, int k) { return std::move(MakeMtpDrafter(target, n, ctx, k)).value(); };
      std::vector<int32_t> reduced(static_cast<size_t>(std::min<int64_t>(kMtpVocab, c.vocab_size / 4)));
      for (size_t i = 0; i < reduced.size(); ++i) reduced[i] = static_cast<int32_t>(i);
      const std::string reduced_name = fmt::format("mtp, {} ids", reduced.size());
      for (int k = 1; k <= 3; ++k) {
        for (const std::string drafter : {"oracle (free)", "draft 0.8B", "mtp", reduced_name.c_str()}) {
          Status vs = model->SetMtpVocab(drafter == reduced_name ? reduced : std::vector<int32_t>{});
          if (!vs.ok()) Die(vs.ToString());
          DrafterRow d{drafter, k, plain_row};
          Speculate(*model, d.row, prompts, k,
                    drafter == "draft 0.8B" ? draft_model : drafter.starts_with("mtp") ? mtp : MakeReal{});
          model->set_keep_hidden(false);  // the MTP engine turned it on
          std::printf("  (f) %s, k %d: %.1f tok/s (%.2f ms/step, %.2f tokens per step, alpha %.3f)\n", drafter.c_str(),
                      k, d.row.spec.tok_s(), d.row.spec.step_ms(), d.row.spec.stats.mean_acceptance_length(),
                      d.row.spec.alpha);
          std::fflush(stdout);
          drafter_rows.push_back(std::move(d));
        }
      }
    }
  }

  std::printf("\n## End-to-end greedy speculation, alpha = %.2f, k = %d (%s)\n\n", kAlpha, kK, device.c_str());
  std::printf("E = (1 - alpha^(k+1)) / (1 - alpha) = %.3f tokens per verify step. Verify floor = (weights streamed "
              "+ 2 x batch x GDN state) / %.0f GB/s. Ideal = batch x E / floor.\n\n",
              E, bw / 1e9);
  std::printf("| model | batch | plain tok/s | spec tok/s | speedup | measured alpha | tokens/step | spec step ms "
              "| floor step ms | step / floor | ideal tok/s | ideal / measured | spec == plain |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    const double ideal = r.batch * E / (r.floor_ms / 1e3);
    std::printf("| Qwen3.5-%s | %d | %.1f | %.1f | %.2fx | %.3f | %.2f | %.2f | %.2f | %.2f | %.1f | %.2f%s | %d/%zu |\n",
                r.model.c_str(), r.batch, r.plain.tok_s(), r.spec.tok_s(), r.spec.tok_s() / r.plain.tok_s(),
                r.spec.alpha, r.spec.stats.mean_acceptance_length(), r.spec.step_ms(), r.floor_ms,
                r.spec.step_ms() / r.floor_ms, ideal, ideal / r.spec.tok_s(),
                r.retries ? fmt::format(" (refs re-run x{})", r.retries).c_str() : "", r.equal_plain,
                r.plain.outputs.size());
  }
  std::printf("\n## Drafters at their real cost, Qwen3.5-%s target, batch 1, alpha = %.2f (%s)\n\n",
              names.back().c_str(), kAlpha, device.c_str());
  std::printf("Each drafter runs in full (draft steps, rollback, the MTP head's cache rows); the verifier sees "
              "the acceptance drafter's tokens in place of its drafts. oracle (free): the acceptance drafter "
              "alone, no drafting cost. Plain: %.1f tok/s.\n\n",
              drafter_rows.empty() ? 0.0 : drafter_rows[0].row.plain.tok_s());
  std::printf("| drafter | k | spec tok/s | speedup over plain | measured alpha | tokens/step | spec step ms | "
              "spec == plain |\n|---|---|---|---|---|---|---|---|\n");
  for (const DrafterRow& d : drafter_rows) {
    std::printf("| %s | %d | %.1f | %.2fx | %.3f | %.2f | %.2f | %d/%zu |\n", d.drafter.c_str(), d.k, d.row.spec.tok_s(),
                d.row.spec.tok_s() / d.row.plain.tok_s(), d.row.spec.alpha, d.row.spec.stats.mean_acceptance_length(),
                d.row.spec.step_ms(), d.row.equal_plain, d.row.plain.outputs.size());
  }
  std::printf("\nSpeculative scratch (replay log; %s layout), Qwen3.5-%s target, k = 8 (9 logged tokens): "
              "%.1f MiB per sequence, %.1f MiB at batch 32.\n",
              smoke ? "CPU fp32" : "CUDA: raw conv rows bf16, k/v/g/beta fp32", names.back().c_str(),
              scratch_slot_mib, scratch_mib);
  std::printf("(tokens/step falls a little below E because k shrinks for the last tokens of each request. "
              "spec == plain: sequences whose greedy speculative output equals plain greedy decoding; bf16 "
              "verify spans may break a near-tie differently, so a few may differ.)\n");
  std::printf("total runtime %.1f s\n", Now() - t_start);
  return 0;
}
