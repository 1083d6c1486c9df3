// Speculation figures on the CPU (issue "Speculative engine", item 9):
//  1. acceptance rate and mean acceptance length per drafter and k on the fixture models,
//     greedy and at temperature 0.7;
//  2. the cost of one verify forward (T = 1..9, kLog + commit) relative to one decode step;
//  3. the speculative scratch memory per sequence at real Qwen3.5 shapes.
// Usage: spec_bench FIXTURES_DIR   (tests/fixtures/qwen35-tiny)
#include <chrono>
#include <cstdio>
#include <string>

#include "bench_util.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/presets.h"
#include "qwen35/model.h"
#include "runtime/backend.h"
#include "speculative/engine.h"

using namespace specd;
using specd::bench::Now;

namespace {

std::vector<int32_t> Ids(const std::string& refs, const char* name) {
  auto ck = std::move(Checkpoint::Open(refs)).value();
  auto v = std::move(ck->ReadI64(name)).value();
  return {v.begin(), v.end()};
}

}  // namespace

int main(int argc, char** argv) {
  const std::string fx = argc > 1 ? argv[1] : "tests/fixtures/qwen35-tiny";
  auto be = MakeCpuBackend();
  auto target = std::move(Qwen35Model::Load(fx + "/dense/model", be.get())).value();
  auto near = std::move(Qwen35Model::Load(fx + "/draft_near/model", be.get())).value();
  auto small = std::move(Qwen35Model::Load(fx + "/draft_small/model", be.get())).value();
  const std::string refs = fx + "/dense/refs.safetensors";
  auto prompt = Ids(refs, "prompt_ids"), longp = Ids(refs, "long_prompt_ids");
  std::vector<int32_t> rep;
  for (int i = 0; i < 5; ++i) rep.insert(rep.end(), prompt.begin(), prompt.begin() + 9);
  const std::vector<std::vector<int32_t>> prompts = {prompt, longp, rep};

  std::printf("## Acceptance on the fixture pair (target dense, 3 prompts x 64 tokens)\n\n");
  std::printf("| drafter | k | temp | acceptance rate | mean acceptance length (tokens per target step) |\n|---|---|---|---|---|\n");
  for (const std::string dname : {"draft_near", "draft_small", "ngram"}) {
    for (float temp : {0.f, 0.7f}) {
      for (int k : {1, 2, 3, 4, 6, 8}) {
        std::unique_ptr<Drafter> d;
        if (dname == "ngram") {
          d = MakeNgramDrafter();
        } else {
          d = std::move(MakeDraftModelDrafter(dname == "draft_near" ? near.get() : small.get(), 512, 4, 512, 16)).value();
        }
        EngineOptions o;
        o.max_seqs = 4;
        o.max_ctx = 512;
        o.default_k = k;
        auto e = std::move(SpeculativeEngine::Create(target.get(), std::move(d), o)).value();
        std::vector<int> ids;
        for (size_t i = 0; i < prompts.size(); ++i) {
          GenerationRequest r;
          r.prompt = prompts[i];
          r.max_tokens = 64;
          r.ignore_eos = true;
          r.sampling.temperature = temp;
          r.sampling.seed = 11 + i;
          ids.push_back(*e->Add(r));
        }
        while (e->HasWork()) {
          auto st = e->Step();
          if (!st.ok()) {
            std::fprintf(stderr, "%s\n", st.ToString().c_str());
            return 1;
          }
        }
        SpeculativeStats all;
        for (int id : ids) all.Merge(e->Stats(id));
        std::printf("| %s | %d | %.1f | %.3f | %.2f |\n", dname.c_str(), k, temp, all.acceptance_rate(),
                    all.mean_acceptance_length());
      }
    }
  }

  std::printf("\n## Verify cost vs one decode step (fixture dense target, CPU, after a 45-token prefill)\n\n");
  CacheOptions co;
  co.max_ctx = 512;
  co.log_capacity = 17;
  auto cache = std::move(target->NewCache(co)).value();
  const int slot = *cache->AllocSlot();
  (void)target->Forward({SeqInput{slot, prompt, StateMode::kUpdate, false}}, *cache);
  // Plain decode: a kUpdate step of one token on a throwaway copy of the state each time.
  auto decode_time = [&]() {
    const int reps = 200;
    double total = 0;
    for (int r = 0; r < reps; ++r) {
      cache->ResetSlot(slot);
      (void)target->Forward({SeqInput{slot, prompt, StateMode::kUpdate, false}}, *cache);
      const double t0 = Now();
      (void)target->Forward({SeqInput{slot, {prompt[1]}, StateMode::kUpdate, false}}, *cache);
      total += Now() - t0;
    }
    return total / reps;
  };
  auto verify_time = [&](int T) {
    const int reps = 200;
    double total = 0;
    for (int r = 0; r < reps; ++r) {
      cache->ResetSlot(slot);
      (void)target->Forward({SeqInput{slot, prompt, StateMode::kUpdate, false}}, *cache);
      std::vector<int32_t> toks(prompt.begin(), prompt.begin() + T);
      const double t0 = Now();
      (void)cache->BeginLog(slot, false);
      (void)target->Forward({SeqInput{slot, toks, StateMode::kLog, true}}, *cache);
      (void)cache->Commit(slot, T);
      total += Now() - t0;
    }
    return total / reps;
  };
  const double dec = decode_time();
  std::printf("| T | verify+commit ms | ratio to decode |\n|---|---|---|\n| decode | %.3f | 1.00 |\n", dec * 1e3);
  for (int T = 1; T <= 9; ++T) {
    const double v = verify_time(T);
    std::printf("| %d | %.3f | %.2f |\n", T, v * 1e3, v / dec);
  }

  std::printf("\n## Speculative scratch per sequence at real shapes (replay log, k = 8 -> 9 logged tokens)\n\n");
  std::printf("| model | live GDN+KV state per slot (ctx 4096) | verify log per slot | + draft checkpoint |\n|---|---|---|---|\n");
  for (bool nine : {false, true}) {
    ModelConfig c = ReleasedShapes(nine ? "9B" : "0.8B").value();
    CacheOptions o;
    o.num_slots = 1;
    o.max_ctx = 4096;
    o.log_capacity = 9;
    o.checkpoints = false;
    auto cc = std::move(ModelCache::Create(c, be.get(), o)).value();
    o.checkpoints = true;
    auto ck = std::move(ModelCache::Create(c, be.get(), o)).value();
    std::printf("| Qwen3.5-%s (fp32 CPU layout) | %.1f MiB | %.1f MiB | %.1f MiB |\n", nine ? "9B" : "0.8B",
                cc->live_bytes_per_slot() / 1048576.0, cc->scratch_bytes_per_slot() / 1048576.0,
                (ck->scratch_bytes_per_slot() - cc->scratch_bytes_per_slot()) / 1048576.0);
  }
  return 0;
}
