// specd: the CLI entry point (docs/server.md).
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cstdio>
#include <string>
#include <vector>

#include "server/cli_generate.h"
#include "server/cli_logits.h"
#include "server/cli_plan.h"
#include "server/cli_draft_vocab.h"
#include "server/cli_tokenize.h"
#ifdef SPECD_HAVE_SERVE
#include "server/serve_main.h"
#endif

int main(int argc, char** argv) {
  CLI::App app{"specd: speculative-decoding server for Qwen3.5"};
  app.require_subcommand(1);

  specd::cli::LogitsArgs la;
  auto* logits = app.add_subcommand("logits", "Write the logits of a prompt to a safetensors file");
  logits->add_option("--model", la.model, "Model directory")->required();
  logits->add_option("--ids", la.ids, "Comma-separated token ids")->required();
  logits->add_option("--split", la.split, "First N tokens are a prefill, the rest ONE cached forward");
  logits->add_option("--device", la.device, "cpu or cuda");
  logits->add_option("--quantize", la.quantize, "none | fp8 (projections rounded to 128x128-block FP8 at load)")
      ->check(CLI::IsMember({"none", "fp8"}));
  logits->add_option("--out", la.out, "Output .safetensors (tensor 'logits', f32 [T, V])")->required();

  specd::cli::GenerateArgs ga;
  auto* gen = app.add_subcommand("generate", "Generate offline (no server), with optional speculation");
  gen->add_option("--model", ga.model, "Target model directory")->required();
  gen->add_option("--draft", ga.draft, "Draft model directory (implies --drafter draft)");
  gen->add_option("--drafter", ga.drafter, "none | ngram | draft | mtp");
  gen->add_option("--mtp-vocab", ga.mtp_vocab, "With --drafter mtp: a reduced draft vocabulary (specd draft-vocab)");
  gen->add_option("--k", ga.k, "Drafts per step (0..16)");
  gen->add_flag("--adaptive-k", ga.adaptive_k, "Choose k per step from the running acceptance");
  auto* p_text = gen->add_option("--prompt", ga.prompt, "Prompt text (needs the model's tokenizer.json)");
  auto* p_ids = gen->add_option("--prompt-ids", ga.prompt_ids, "Prompt token ids, comma-separated");
  p_text->excludes(p_ids);
  gen->add_option("--max-tokens", ga.max_tokens, "Tokens to generate at most");
  gen->add_option("--min-tokens", ga.min_tokens, "No eos/stop before this many tokens");
  gen->add_option("--temperature", ga.temperature, "0 = greedy");
  gen->add_option("--top-p", ga.top_p);
  gen->add_option("--top-k", ga.top_k);
  gen->add_option("--min-p", ga.min_p);
  gen->add_option("--seed", ga.seed);
  gen->add_option("--sampling-mode", ga.sampling_mode, "rejection | coupled");
  gen->add_option("--stop-ids", ga.stop_ids, "Stop token ids, comma-separated");
  gen->add_flag("--ignore-eos", ga.ignore_eos);
  gen->add_option("--device", ga.device, "cpu or cuda");
  gen->add_flag("--json", ga.json, "Print one JSON object");

  specd::cli::TokenizeArgs ta;
  auto* tokz = app.add_subcommand("tokenize", "Encode texts with a tokenizer.json and decode them back (JSON)");
  tokz->add_option("--tokenizer", ta.tokenizer, "tokenizer.json or a folder holding it")->required();
  auto* t_text = tokz->add_option("--text", ta.text, "One text");
  auto* t_in = tokz->add_option("--input", ta.input, "A JSON file with a list of strings");
  t_text->excludes(t_in);

  specd::cli::DraftVocabArgs dva;
  auto* dvoc = app.add_subcommand("draft-vocab", "The most frequent tokens of a corpus: a reduced draft vocabulary "
                                                 "for the MTP head (--mtp-vocab)");
  dvoc->add_option("--tokenizer", dva.tokenizer, "tokenizer.json or the model folder holding it")->required();
  dvoc->add_option("--size", dva.size, "Tokens to keep")->check(CLI::PositiveNumber);
  dvoc->add_option("--out", dva.out, "The vocabulary file to write (JSON)")->required();
  dvoc->add_option("files", dva.files, "Corpus text files")->required();

  specd::cli::PlanArgs pa;
  auto* plan = app.add_subcommand("plan", "The memory plan of a serving configuration on a device of a given size, "
                                          "from config.json alone (docs/memory.md)");
  plan->add_option("--model", pa.model, "Model folder or random:NAME (0.8B, 2B, 4B, 9B, 27B, 35B-A3B)")->required();
  plan->add_option("--draft", pa.draft, "Draft model folder or random:NAME");
  plan->add_flag("--mtp", pa.mtp, "The MTP head drafts");
  plan->add_option("--device-memory", pa.device_memory, "Device memory, e.g. 141G or 80G")
      ->required()
      ->transform(CLI::AsSizeValue(false));
  plan->add_option("--gpu-memory-fraction", pa.fraction)->check(CLI::Range(0.01, 1.0));
  plan->add_option("--max-batch", pa.max_batch)->check(CLI::Range(1, 4096));
  plan->add_option("--max-context", pa.max_context)->check(CLI::PositiveNumber);
  plan->add_option("--k", pa.k, "max k (the verify log holds k + 1 rows)")->check(CLI::Range(0, 16));
  plan->add_option("--max-prefill-tokens", pa.max_prefill_tokens)->check(CLI::PositiveNumber);
  plan->add_option("--prefix-cache-bytes", pa.prefix_cache_bytes)->transform(CLI::AsSizeValue(false));
  plan->add_flag("--json", pa.json, "Print one JSON object");

#ifdef SPECD_HAVE_SERVE
  specd::serve::ServeOptions so;
  auto* serve = app.add_subcommand("serve", "Run the gRPC daemon (no --model: the embedded default pair)");
  specd::serve::AddServeFlags(serve, &so);
#endif

#ifdef SPECD_HAVE_SERVE
  // `serve --config FILE`: the file's keys become flags before parsing (see serve_options.h).
  std::vector<std::string> args(argv, argv + argc), expanded;
  std::string config_error;
  if (!specd::serve::ExpandServeConfig(args, &expanded, &config_error)) {
    fmt::print(stderr, "specd: {}\n", config_error);
    return 2;
  }
  std::vector<char*> eargv;
  for (auto& a : expanded) eargv.push_back(a.data());
  argc = static_cast<int>(eargv.size());
  eargv.push_back(nullptr);
  argv = eargv.data();
#endif

  CLI11_PARSE(app, argc, argv);

  specd::Status st;
  if (*logits) st = specd::cli::RunLogits(la);
  if (*gen) st = specd::cli::RunGenerate(ga);
  if (*tokz) st = specd::cli::RunTokenize(ta);
  if (*dvoc) st = specd::cli::RunDraftVocab(dva);
  if (*plan) st = specd::cli::RunPlan(pa);
#ifdef SPECD_HAVE_SERVE
  if (*serve) st = specd::serve::RunServe(so);
#endif
  if (!st.ok()) {
    fmt::print(stderr, "specd: {}\n", st.ToString());
    return 1;
  }
  return 0;
}
