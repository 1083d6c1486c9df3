// The MTP head's cache against a sequential run, after every engine step (CPU and GPU tests):
// each running sequence's head KV must hold exactly the rows the head gives over (h_t, x_{t+1})
// for every consumed position but the last, h from ONE target forward over the sequence's tokens.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "engine_run.h"
#include "test_util.h"

namespace specd::testing {

// The target's final-normed hidden states of `tokens` from a fresh cache, [n, H].
inline Tensor TargetHidden(Qwen35Model& m, const std::vector<int32_t>& tokens) {
  CacheOptions o;
  o.max_ctx = 512;
  auto c = m.NewCache(o);
  EXPECT_TRUE(c.ok());
  m.set_keep_hidden(true);
  RunForward(m, **c, *(*c)->AllocSlot(), tokens, /*all_logits=*/false);
  return m.last_hidden();
}

// Prompt + plain greedy continuation of each request: what an oracle drafts from.
inline std::vector<std::vector<int32_t>> References(const std::vector<GenerationRequest>& reqs,
                                                    const EngineRun& plain) {
  std::vector<std::vector<int32_t>> refs;
  for (size_t i = 0; i < reqs.size(); ++i) {
    refs.push_back(reqs[i].prompt);
    refs.back().insert(refs.back().end(), plain.out[i].begin(), plain.out[i].end());
  }
  return refs;
}

struct HeadCacheRun {
  int checked = 0;      // (sequence, step) pairs compared
  double worst = 0;     // largest relative L2 error of K or V seen
  int64_t kept = 0;     // drafts the verifier kept
  std::vector<std::vector<int32_t>> out;
};

// Runs `reqs` on an engine over `drafter` (an MTP drafter, or one wrapping it) and, after every
// step, compares every running sequence's head K and V with a sequential run's (relative L2 <=
// `tol`, attention layer 0 of the head).
inline HeadCacheRun RunCheckingHeadCache(Qwen35Model& m, std::unique_ptr<Drafter> drafter,
                                         const std::vector<GenerationRequest>& reqs, const EngineOptions& o,
                                         double tol) {
  HeadCacheRun r;
  auto made = SpeculativeEngine::Create(&m, std::move(drafter), o);
  EXPECT_TRUE(made.ok()) << made.status().ToString();
  if (!made.ok()) return r;
  SpeculativeEngine& e = **made;
  std::vector<int> ids;
  for (const auto& q : reqs) {
    auto id = e.Add(q);
    EXPECT_TRUE(id.ok()) << id.status().ToString();
    if (!id.ok()) return r;
    ids.push_back(*id);
  }
  Drafter& dr = *e.drafter();
  ModelCache& head = *dr.state_cache();
  while (e.HasWork()) {
    const Status st = e.Step();
    EXPECT_TRUE(st.ok()) << st.ToString();
    if (!st.ok()) return r;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (e.Finished(ids[i])) continue;
      const int slot = dr.slot_of(ids[i]);
      const int64_t c = head.length(slot);
      // The tokens the target consumed: the prompt chunks so far, or all but the pending one.
      const auto& gen = e.Generated(ids[i]);
      std::vector<int32_t> seq = reqs[i].prompt;
      seq.insert(seq.end(), gen.begin(), gen.end());
      const int64_t consumed = e.target_cache().length(e.target_slot(ids[i]));
      if (!gen.empty()) {
        EXPECT_EQ(consumed, static_cast<int64_t>(seq.size()) - 1) << "sequence " << i;
      }
      EXPECT_EQ(c + 1, consumed) << "sequence " << i;
      if (c == 0 || c + 1 != consumed) continue;
      const Tensor h = TargetHidden(m, {seq.begin(), seq.begin() + consumed});
      CacheOptions co;
      co.max_ctx = 512;
      auto ref = m.NewMtpCache(co);
      EXPECT_TRUE(ref.ok());
      if (!ref.ok()) return r;
      const int rs = *(*ref)->AllocSlot();
      const auto fo = m.MtpForward({SeqInput{rs, {seq.begin() + 1, seq.begin() + c + 1}, StateMode::kUpdate, false}},
                                   h.Rows(0, c), **ref);
      EXPECT_TRUE(fo.ok()) << fo.status().ToString();
      for (bool values : {false, true}) {
        const auto got = head.SlotKvF32(0, values, slot, c), want = (*ref)->SlotKvF32(0, values, rs, c);
        const double err = RelL2(got, want);
        r.worst = std::max(r.worst, err);
        EXPECT_LE(err, tol) << "sequence " << i << " rows " << c << (values ? " V" : " K");
      }
      ++r.checked;
    }
  }
  for (int id : ids) {
    r.kept += e.Stats(id).accepted_tokens;
    r.out.push_back(e.Generated(id));
  }
  return r;
}

}  // namespace specd::testing
