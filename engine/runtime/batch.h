// The flattened variable-length batch a forward runs over, and what each sequence does to its
// cache slot. Every op that touches per-sequence state reads the same BatchInfo.
#pragma once

#include <cstdint>
#include <vector>

#include "specd/state_mode.h"

namespace specd {

// What a span does to its slot's state (docs/DESIGN-NOTES.md, replay design):
// StateMode (kUpdate, kLog, kUpdateLog) and WritesState / WritesLog: specd/state_mode.h, the
// header the kernels read the same values from.

struct SeqSpan {
  int slot = 0;
  int64_t offset = 0;   // first token of this span in the flattened batch
  int64_t len = 0;      // tokens of this span (prefill chunk, 1 decode token, or k+1 verify)
  int64_t n_past = 0;   // tokens the slot has already consumed = absolute position of the first
  StateMode mode = StateMode::kUpdate;
  int log_offset = 0;   // first log entry written (kLog / kUpdateLog)
  bool all_logits = false;  // logits for every token, or only for the last
};

struct BatchInfo {
  std::vector<SeqSpan> seqs;
  int64_t num_tokens = 0;
  int64_t max_len = 0;
};

}  // namespace specd
