// The flattened variable-length batch a forward runs over, and what each sequence does to its
// cache slot. Every op that touches per-sequence state reads the same BatchInfo.
#pragma once

#include <cstdint>
#include <vector>

namespace specd {

// What a span does to its slot's state (docs/DESIGN-NOTES.md, replay design):
enum class StateMode : uint8_t {
  // Consume the tokens: conv window, recurrent state and KV length all advance.
  kUpdate,
  // Verify: read the state but write none of it; log each token's (raw conv row, k, v, g, beta)
  // so a later commit can replay exactly the accepted prefix. KV rows are written past the
  // slot's length and become visible only through the commit.
  kLog,
  // Draft steps: advance the state AND log, so a rollback (checkpoint + replay) can undo them.
  kUpdateLog,
};

inline bool WritesState(StateMode m) { return m != StateMode::kLog; }
inline bool WritesLog(StateMode m) { return m != StateMode::kUpdate; }

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
