// GPT-2 style ByteLevel mapping: every byte is shown as one printable code point, so that a
// vocabulary of strings can hold arbitrary bytes. The model runs on raw bytes internally; this
// mapping is only needed to translate the vocabulary strings of tokenizer.json.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace specd::byte_level {

// UTF-8 of the code point that stands for byte b.
const std::string& ByteToChar(uint8_t b);

// Inverse of ByteToChar for the whole string: nullopt if any code point is not one of the 256
// mapped ones (HF's ByteLevel decoder then keeps the token's own UTF-8 bytes).
std::optional<std::string> CharsToBytes(std::string_view token);

}  // namespace specd::byte_level
