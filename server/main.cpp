// specd: the CLI entry point (DESIGN.md §7).
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cstdio>

#include "server/cli_logits.h"

int main(int argc, char** argv) {
  CLI::App app{"specd: speculative-decoding server for Qwen3.5"};
  app.require_subcommand(1);

  specd::cli::LogitsArgs la;
  auto* logits = app.add_subcommand("logits", "Write the logits of a prompt to a safetensors file");
  logits->add_option("--model", la.model, "Model directory")->required();
  logits->add_option("--ids", la.ids, "Comma-separated token ids")->required();
  logits->add_option("--split", la.split, "First N tokens are a prefill, the rest ONE cached forward");
  logits->add_option("--device", la.device, "cpu or cuda");
  logits->add_option("--out", la.out, "Output .safetensors (tensor 'logits', f32 [T, V])")->required();

  CLI11_PARSE(app, argc, argv);

  specd::Status st;
  if (*logits) st = specd::cli::RunLogits(la);
  if (!st.ok()) {
    fmt::print(stderr, "specd: {}\n", st.ToString());
    return 1;
  }
  return 0;
}
