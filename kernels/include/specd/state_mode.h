// What a span of a batch does to its slot's state, shared by the engine (runtime/batch.h:
// SeqSpan::mode) and the kernels (kernels.h: SeqMeta::mode carries the same numbers), so the
// two sides cannot disagree on a value. Plain C++, no CUDA.
#pragma once

#include <cstdint>

namespace specd {

enum class StateMode : uint8_t {
  // Consume the tokens: conv window, recurrent state and KV length all advance.
  kUpdate = 0,
  // Verify: read the state but write none of it; log each token's (raw conv row, k, v, g, beta)
  // so a later commit can replay exactly the accepted prefix. KV rows are written past the
  // slot's length and become visible only through the commit.
  kLog = 1,
  // Draft steps: advance the state AND log, so a rollback (checkpoint + replay) can undo them.
  kUpdateLog = 2,
};

constexpr bool WritesState(StateMode m) { return m != StateMode::kLog; }
constexpr bool WritesLog(StateMode m) { return m != StateMode::kUpdate; }

}  // namespace specd
