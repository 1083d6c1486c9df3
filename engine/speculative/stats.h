// Per-request speculative statistics (vLLM-compatible meanings).
#pragma once

#include <cstdint>
#include <vector>

namespace specd {

struct SpeculativeStats {
  int64_t draft_tokens = 0;     // drafts proposed
  int64_t accepted_tokens = 0;  // drafts kept by the verifier
  int64_t verify_steps = 0;     // target decode/verify forwards
  std::vector<int64_t> drafted_at;   // [i]: steps that proposed a draft at position i
  std::vector<int64_t> accepted_at;  // [i]: steps whose draft at position i was kept

  void Record(int proposed, int accepted) {
    ++verify_steps;
    draft_tokens += proposed;
    accepted_tokens += accepted;
    if (static_cast<int>(drafted_at.size()) < proposed) {
      drafted_at.resize(proposed, 0);
      accepted_at.resize(proposed, 0);
    }
    for (int i = 0; i < proposed; ++i) ++drafted_at[i];
    for (int i = 0; i < accepted; ++i) ++accepted_at[i];
  }
  double acceptance_rate() const {
    return draft_tokens ? static_cast<double>(accepted_tokens) / static_cast<double>(draft_tokens) : 0.0;
  }
  // Tokens emitted per target forward (1 + accepted drafts per step).
  double mean_acceptance_length() const {
    return verify_steps ? static_cast<double>(accepted_tokens + verify_steps) / static_cast<double>(verify_steps) : 0.0;
  }
  std::vector<double> per_position_acceptance() const {
    std::vector<double> r(drafted_at.size());
    for (size_t i = 0; i < r.size(); ++i) {
      r[i] = drafted_at[i] ? static_cast<double>(accepted_at[i]) / static_cast<double>(drafted_at[i]) : 0.0;
    }
    return r;
  }
  void Merge(const SpeculativeStats& o) {
    draft_tokens += o.draft_tokens;
    accepted_tokens += o.accepted_tokens;
    verify_steps += o.verify_steps;
    if (drafted_at.size() < o.drafted_at.size()) {
      drafted_at.resize(o.drafted_at.size(), 0);
      accepted_at.resize(o.drafted_at.size(), 0);
    }
    for (size_t i = 0; i < o.drafted_at.size(); ++i) {
      drafted_at[i] += o.drafted_at[i];
      accepted_at[i] += o.accepted_at[i];
    }
  }
};

}  // namespace specd
