// The MTP head's draft step on the GPU at released shapes (random weights; issue "MTP drafter",
// item 5): one chained head step per sequence (the decoder layer + the lm_head over the full
// vocabulary, and a reduced draft vocabulary of kReduced ids), replayed from its graph, against
// its floor (the bytes it must read / copy bandwidth) and against the target's own decode step, at
// batch 1 and 8; and what keeping the target's hidden rows (the head's input) adds to the
// target's decode step.
#include <cuda_runtime.h>

#include <cstdio>
#include <string>
#include <vector>

#include "checkpoint/presets.h"
#include "qwen35/model.h"
#include "runtime/backend.h"
#include "gpu_bench_util.h"

using namespace specd;
using specd::bench::CopyBandwidth;
using specd::bench::Median;
using specd::bench::Now;

namespace {

constexpr int64_t kReduced = 32768;  // ids of the reduced draft vocabulary (--mtp-vocab)

template <typename T>
T Check(StatusOr<T> v, const char* what) {
  if (!v.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, v.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(v).value();
}

// Median wall time of `f` over 30 calls after 5 warm-up calls (which capture the graphs).
template <typename F>
double TimeMs(Backend& be, F f) {
  for (int i = 0; i < 5; ++i) f();
  std::vector<double> t;
  for (int i = 0; i < 30; ++i) {
    be.Synchronize();
    const double t0 = Now();
    f();
    be.Synchronize();
    t.push_back((Now() - t0) * 1e3);
  }
  return Median(t);
}

// Bytes one head step reads at batch B: every head weight, except the MoE experts no row routes
// to (at most B x top_k of them), and the lm_head rows of its vocabulary (`vocab` ids).
double HeadBytes(const ModelConfig& c, const MtpWeights& h, int B, int64_t vocab) {
  double bytes = static_cast<double>(h.bytes);
  if (c.is_moe) {
    const double expert = 3.0 * c.moe_intermediate_size * c.hidden_size * 2;
    const int hit = std::min(c.num_experts, B * c.num_experts_per_tok);
    bytes -= expert * (c.num_experts - hit);
  }
  return bytes + static_cast<double>(vocab) * c.hidden_size * 2;
}

}  // namespace

int main() {
  auto made = MakeBackend("cuda");
  if (!made.ok()) {
    std::fprintf(stderr, "mtp_bench: %s\n", made.status().ToString().c_str());
    return 1;
  }
  Backend& be = **made;
  ChangeOptions(be, [&](BackendOptions& o) { o.graph_limit = 128; o.graph_capture_after = 1; });
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  const double bw = CopyBandwidth();
  std::printf("device: %s; copy bandwidth (read+write) %.0f GB/s\n\n", prop.name, bw / 1e9);
  std::printf("| shapes | batch | draft vocabulary | head MB read | floor ms | head step ms | step/floor | target decode ms | "
              "decode + hidden ms | head step / decode |\n|---|---|---|---|---|---|---|---|---|---|\n");
  for (const char* name : {"9B", "35B-A3B"}) {
    const ModelConfig c = Check(ReleasedShapes(name), "shapes");
    auto model = Qwen35Model::Random(c, &be, 7);
    model->RandomMtpHead(8);
    for (int B : {1, 8}) {
      CacheOptions co;
      co.num_slots = B;
      co.max_ctx = 4096;
      co.log_capacity = 17;
      auto cache = Check(model->NewCache(co), "cache");
      auto head = Check(model->NewMtpCache(co), "head cache");
      std::vector<int> slot, hslot;
      for (int b = 0; b < B; ++b) {
        slot.push_back(Check(cache->AllocSlot(), "slot"));
        hslot.push_back(Check(head->AllocSlot(), "slot"));
        std::vector<int32_t> prompt(256);
        for (int i = 0; i < 256; ++i) prompt[i] = static_cast<int32_t>((i * 7919 + b * 31) % 200000);
        (void)Check(model->Forward({SeqInput{slot[b], prompt, StateMode::kUpdate, false}}, *cache), "prefill");
      }
      int step = 0;
      auto decode = [&]() {
        std::vector<SeqInput> in;
        for (int b = 0; b < B; ++b) in.push_back(SeqInput{slot[b], {(step * 13 + b) % 200000}, StateMode::kUpdate, false});
        ++step;
        (void)Check(model->Forward(in, *cache), "decode");
      };
      model->set_keep_hidden(false);
      const double dec_ms = TimeMs(be, decode);
      model->set_keep_hidden(true);
      const double dec_h_ms = TimeMs(be, decode);
      Tensor hidden = model->last_hidden();
      auto head_step = [&]() {
        std::vector<SeqInput> in;
        for (int b = 0; b < B; ++b) in.push_back(SeqInput{hslot[b], {(step * 17 + b) % 200000}, StateMode::kUpdate, false});
        ++step;
        auto o = Check(model->MtpForward(in, hidden, *head), "head step");
        hidden = o.hidden;  // chained: the head's own output feeds the next step
      };
      for (const int64_t vocab : {c.vocab_size, kReduced}) {
        std::vector<int32_t> ids;
        if (vocab < c.vocab_size) {  // the first `vocab` ids: which ones does not change the cost
          for (int32_t i = 0; i < vocab; ++i) ids.push_back(i);
        }
        if (Status st = model->SetMtpVocab(ids); !st.ok()) {
          std::fprintf(stderr, "SetMtpVocab: %s\n", st.ToString().c_str());
          return 1;
        }
        const double head_ms = TimeMs(be, head_step);
        const double bytes = HeadBytes(c, *model->mtp_head(), B, vocab);
        const double floor_ms = bytes / bw * 1e3;
        std::printf("| %s | %d | %s | %.0f | %.3f | %.3f | %.2f | %.3f | %.3f | %.3f |\n", name, B,
                    vocab == c.vocab_size ? "full" : std::to_string(vocab).c_str(), bytes / 1e6, floor_ms, head_ms,
                    head_ms / floor_ms, dec_ms, dec_h_ms, head_ms / dec_ms);
      }
    }
  }
  const auto gs = be.graph_stats();
  std::printf("\ngraphs: %lld captured, %lld replays\n", static_cast<long long>(gs.captures),
              static_cast<long long>(gs.replays));
  return 0;
}
