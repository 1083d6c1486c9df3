// What a backend's ChooseTokens does with one row of logits. The rule (speculative/sampling.h,
// ChooseRow) is the host's: p = the processed distribution (temperature, top-k, top-p, min-p),
// then one draw from p, or, for a verify row, the accept test of a draft and the draw that
// replaces it. Draws come from the counter RNG (specd/counter_rng.h), so the CPU reference and
// the device agree on every random number.
#pragma once

#include <cstdint>

namespace specd {

struct TokenRowSpec {
  float temperature = 0.f;  // 0 = greedy: the row's argmax (ArgmaxF)
  int32_t top_k = 0;        // 0 = off
  float top_p = 1.f;        // 1 = off
  float min_p = 0.f;        // 0 = off
  uint64_t seed = 0;
  int64_t position = 0;     // absolute position of the token this row chooses
  bool coupled = false;     // Gumbel argmax with (seed, position) noise instead of an inverse-CDF draw
  // >= 0: a verify row of this draft token. Greedy and coupled rows accept it iff it equals
  // their own token; sampled rows apply the rejection rule against q.
  int32_t draft = -1;
  int32_t index = 0;        // the draw's index in the counter hash (a verify row: draft index + 1)
  int32_t stream = 1;       // RngStream of a plain draw (kSample; kDraft in a draft model)
  int32_t q_row = -1;       // rejection rows: row of q holding the draft's distribution; -1 = one-hot
  bool greedy() const { return temperature <= 0.f; }
};

// token: the chosen token (a verify row: its replacement if the draft is rejected);
// accept: 1 when a verify row keeps its draft, else 0.
struct TokenChoice {
  int32_t token = 0;
  int32_t accept = 0;
};

}  // namespace specd
