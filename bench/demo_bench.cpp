// Figures of the embedded demo pair (models/demo) on the CPU: acceptance rate and mean
// acceptance length for k = 1..8 (greedy and temperature 0.7) with the target's MTP head, the
// demo draft and the n-gram drafter, and tokens/s with and without speculation.
// Usage: demo_bench [SOURCE_DIR] [--mtp-vocab=FILE ...] [PROMPT_FILES...]  (prompts: the first 40
// lines of each file; each --mtp-vocab adds the MTP head's acceptance with that reduced draft
// vocabulary, `specd draft-vocab`)
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "bench_util.h"
#include "qwen35/model.h"
#include "runtime/backend.h"
#include "speculative/draft_vocab.h"
#include "speculative/engine.h"
#include "tokenizer/tokenizer.h"

using namespace specd;
using specd::bench::Now;

namespace {

std::string Head(const std::string& path, int lines) {
  std::ifstream in(path);
  std::string line, out;
  for (int i = 0; i < lines && std::getline(in, line); ++i) out += line + "\n";
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string src = argc > 1 ? argv[1] : ".";
  std::vector<std::string> files, vocabs;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--mtp-vocab=", 0) == 0) {
      vocabs.push_back(arg.substr(12));
    } else {
      files.push_back(arg);
    }
  }
  if (files.empty()) {
    for (const char* f : {"colorsys.py", "ftplib.py", "tracemalloc.py", "ipaddress.py", "ast.py"}) {
      files.push_back(std::string("/usr/lib/python3.11/") + f);
    }
  }
  auto be = MakeCpuBackend();
  auto target = std::move(Qwen35Model::Load(src + "/models/demo/target", be.get())).value();
  auto draft = std::move(Qwen35Model::Load(src + "/models/demo/draft", be.get())).value();
  auto tok = std::move(Tokenizer::Load(src + "/models/demo/target")).value();
  if (Status st = target->LoadMtpHead(src + "/models/demo/target"); !st.ok()) {
    std::fprintf(stderr, "demo_bench: the demo target's MTP head: %s\n", st.ToString().c_str());
    return 1;
  }
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& f : files) {
    const std::string text = Head(f, 40);
    if (text.empty()) continue;
    prompts.push_back(std::move(tok->Encode(text)).value());
  }
  std::printf("demo pair on the CPU: %zu prompts (first 40 lines of %zu held-out stdlib files), 64 new tokens each\n\n",
              prompts.size(), files.size());
  const int64_t V = target->config().vocab_size;
  auto run = [&](const std::string& drafter, int k, float temp, double* secs) {
    std::unique_ptr<Drafter> d;
    if (drafter == "draft") d = std::move(MakeDraftModelDrafter(draft.get(), V, 8, 4096, 16)).value();
    if (drafter == "ngram") d = MakeNgramDrafter();
    if (drafter == "mtp") d = std::move(MakeMtpDrafter(target.get(), 8, 4096, 16)).value();
    EngineOptions o;
    o.max_seqs = 1;
    o.max_ctx = 4096;
    o.default_k = k;
    auto e = std::move(SpeculativeEngine::Create(target.get(), std::move(d), o)).value();
    SpeculativeStats all;
    double t = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      GenerationRequest r;
      r.prompt = prompts[i];
      r.max_tokens = 64;
      r.ignore_eos = true;
      r.sampling.temperature = temp;
      r.sampling.seed = 7 + i;
      const int id = *e->Add(r);
      const double t0 = Now();
      while (!e->Finished(id)) (void)e->Step();
      t += Now() - t0;
      all.Merge(e->Stats(id));
      e->Release(id);
    }
    if (secs) *secs = t;
    return all;
  };
  for (float temp : {0.f, 0.7f}) {
    std::printf("temperature %.1f: acceptance rate / tokens per verify step\n", temp);
    std::printf("|k|mtp acc|mtp len|draft acc|draft len|ngram acc|ngram len|\n|---|---|---|---|---|---|---|\n");
    for (int k = 1; k <= 8; ++k) {
      const SpeculativeStats m = run("mtp", k, temp, nullptr);
      const SpeculativeStats a = run("draft", k, temp, nullptr), b = run("ngram", k, temp, nullptr);
      std::printf("|%d|%.3f|%.2f|%.3f|%.2f|%.3f|%.2f|\n", k, m.acceptance_rate(), m.mean_acceptance_length(),
                  a.acceptance_rate(), a.mean_acceptance_length(), b.acceptance_rate(), b.mean_acceptance_length());
    }
    std::printf("\n");
  }
  for (const auto& path : vocabs) {
    auto ids = LoadDraftVocab(path, V);
    if (!ids.ok() || !target->SetMtpVocab(*ids).ok()) {
      std::fprintf(stderr, "demo_bench: %s: %s\n", path.c_str(), ids.status().ToString().c_str());
      return 1;
    }
    std::printf("mtp with the reduced draft vocabulary %s (%zu of %lld tokens): acceptance / tokens per step\n",
                path.c_str(), target->mtp_vocab().size(), static_cast<long long>(V));
    std::printf("|k|greedy acc|greedy len|T 0.7 acc|T 0.7 len|\n|---|---|---|---|---|\n");
    for (int k = 1; k <= 4; ++k) {
      const SpeculativeStats g = run("mtp", k, 0.f, nullptr), t = run("mtp", k, 0.7f, nullptr);
      std::printf("|%d|%.3f|%.2f|%.3f|%.2f|\n", k, g.acceptance_rate(), g.mean_acceptance_length(), t.acceptance_rate(),
                  t.mean_acceptance_length());
    }
    std::printf("\n");
    (void)target->SetMtpVocab({});
  }
  if (!vocabs.empty()) return 0;  // the vocabulary tables only
  const double n_tokens = 64.0 * static_cast<double>(prompts.size());
  std::printf("|setting (greedy, batch 1)|tokens/s|\n|---|---|\n");
  for (auto [name, k] : {std::pair<std::string, int>{"none", 0}, {"mtp", 2}, {"mtp", 3}, {"draft", 2}, {"draft", 4},
                         {"ngram", 4}}) {
    double secs = 0;
    run(name, k, 0.f, &secs);  // warm
    run(name, k, 0.f, &secs);
    std::printf("|%s k=%d|%.1f|\n", name.c_str(), k, n_tokens / secs);
  }
  return 0;
}
