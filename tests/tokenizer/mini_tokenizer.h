// A hand-made byte-level BPE tokenizer.json small enough that expected ids can be worked out
// by hand: byte b has id b, plus the merges below and two added tokens.
#pragma once

#include <nlohmann/json.hpp>

namespace specd::testing {

// Vocab: ByteLevel char of byte b -> b; "ab" 256, "abc" 257, "Ġa" 258, "Ġab" 259.
// Merges by rank: (a b), (ab c), (Ġ a), (Ġa b).
// Added: "<X>" 260 (special, lstrip+rstrip), "ǘ" (U+01D8) 261 (normalized, not special);
// HF numbers added tokens right after the vocabulary.
nlohmann::json MiniTokenizerJson();

}  // namespace specd::testing
