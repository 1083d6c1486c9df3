// Limits shared by the engine and the kernels, written once. Plain C++ (no CUDA): the engine
// includes it on every build; kernels check their own capacities against it with static_asserts.
#pragma once

namespace specd {

// Draft tokens one speculative step may propose per sequence (--max-k, EngineOptions::max_k,
// GenerationRequest::k are bounded by it).
inline constexpr int kMaxDraftTokens = 16;
// Tokens one verify span feeds the target for a sequence: the last accepted token + the drafts.
// The GDN fused kernel, the conv/recurrent state logs and the graph-shape buckets hold this many.
inline constexpr int kMaxVerifySpan = kMaxDraftTokens + 1;

}  // namespace specd
