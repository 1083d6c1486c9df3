// specd::Tokenizer: HF tokenizer.json (byte-level BPE, Qwen3 / Qwen3.5 families) in C++.
//
// Encode matches HF tokenizers' encode(text, add_special_tokens=False) id for id; Decode
// matches decode(ids, skip_special_tokens). Whatever the loader does not implement exactly is
// refused at Load with kUnimplemented (see docs/tokenizer.md), never approximated.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/chat_template.h"
#include "util/status.h"

namespace specd {

class Tokenizer {
 public:
  // `file_or_dir`: a tokenizer.json, or a folder holding tokenizer.json and optionally
  // tokenizer_config.json (chat template, eos / pad token) and chat_template.jinja.
  static StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& file_or_dir);
  // Same from memory; `tokenizer_config_json` may be empty.
  static StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view tokenizer_json,
                                                       std::string_view tokenizer_config_json = {});
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Text -> ids, with add_special_tokens=False semantics: added tokens written in the text
  // (e.g. "<|im_start|>") become their ids; nothing is prepended or appended.
  // Invalid UTF-8 -> kInvalidArgument naming the byte offset of the first bad byte.
  // Safe to call from many threads at once.
  StatusOr<std::vector<int32_t>> Encode(std::string_view text) const;
  // Appends to *out instead of returning a new vector (on error *out is left as it was).
  Status EncodeTo(std::string_view text, std::vector<int32_t>* out) const;

  // Ids -> text. Bytes that do not form UTF-8 become U+FFFD (one per maximal invalid
  // subpart, as HF does). Ids outside the vocabulary are skipped, as HF does.
  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // Raw bytes one id contributes to a decode (possibly a partial UTF-8 character); empty for
  // unknown ids. This is what IncrementalDetokenizer concatenates.
  std::string_view TokenBytes(int32_t id) const;

  // Vocabulary string (ByteLevel form, e.g. "Ġthe") or added-token content -> id.
  std::optional<int32_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(int32_t id) const;

  // Size of the id space: 1 + the largest id (model vocab and added tokens).
  int32_t vocab_size() const;
  // True for added tokens flagged special (skipped by skip_special_tokens).
  bool IsSpecial(int32_t id) const;
  bool IsKnown(int32_t id) const;

  // From tokenizer_config.json, when loaded from a folder that has one.
  std::optional<int32_t> eos_token_id() const { return eos_id_; }
  std::optional<int32_t> pad_token_id() const { return pad_id_; }
  const std::string& chat_template() const { return chat_template_; }
  // kQwen3 / kQwen35 only when chat_template() is exactly a template this library renders.
  ChatFormat chat_format() const { return chat_format_; }

  // Renders messages the way the tokenizer's own chat template does. kFailedPrecondition when
  // the template is not one this library implements (chat_format() == kUnknown).
  StatusOr<std::string> ApplyChatTemplate(std::span<const ChatMessage> messages,
                                          const ChatOptions& options) const;

  // How special tokens written inside message text are encoded.
  enum class ContentSpecials {
    kText,   // as the characters they are made of: a message cannot open or close a turn
    kParse,  // as control tokens, like transformers' apply_chat_template(tokenize=True): trusted input only
  };
  struct EncodedChat {
    std::string text;  // the rendered template
    std::vector<int32_t> ids;
  };
  // Renders and encodes a conversation. With kText the ids differ from Encode(text) only where a
  // message spells a special token; the template's own markup is always control tokens.
  StatusOr<EncodedChat> EncodeChat(std::span<const ChatMessage> messages, const ChatOptions& options,
                                   ContentSpecials specials = ContentSpecials::kText) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  Status EncodeOrdinary(std::string_view text, std::vector<int32_t>* out) const;
  Status NoChatTemplate() const;
  // The renderer for chat_format_ (content ranges included).
  StatusOr<RenderedChat> RenderChat(std::span<const ChatMessage> messages, const ChatOptions& options) const;
  Status EncodeWithLiterals(std::string_view text, std::span<const RenderedChat::Range> literal,
                            std::vector<int32_t>* out) const;

  std::unique_ptr<Impl> impl_;
  std::optional<int32_t> eos_id_;
  std::optional<int32_t> pad_id_;
  std::string chat_template_;
  ChatFormat chat_format_ = ChatFormat::kUnknown;
};

}  // namespace specd
