// Text for the CLI and the daemon: the model folder's tokenizer (tokenizer.json, and
// tokenizer_config.json for the chat template) when this build has the tokenizer library, else
// token ids only (the fixture models ship no tokenizer; their text is empty).
// Thread safety: Encode, Decode and EncodeChat may be called from many threads at once; a
// TextStream belongs to one thread.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "util/status.h"

namespace specd::cli {

struct ChatToolCall {
  std::string name;
  std::string arguments_json;  // a JSON object
};

// One message of a conversation (OpenAI's roles: system, user, assistant, tool).
struct ChatTurn {
  std::string role, content;
  std::optional<std::string> reasoning;  // an assistant turn's reasoning_content
  std::vector<ChatToolCall> tool_calls;  // an assistant turn's tool calls
};

struct ChatRequestOptions {
  bool add_generation_prompt = true;
  bool enable_thinking = true;
  // Special tokens spelled inside messages are parsed as control tokens (trusted input only);
  // by default they are text, so message content cannot open or close turns (role injection).
  bool parse_specials_in_content = false;
  std::vector<std::string> tools_json;  // OpenAI tool definitions, each a JSON object
};

struct ChatEncoding {
  std::string text;  // the rendered template
  std::vector<int32_t> ids;
  // The prompt ends inside an open "<think>" block (Qwen3.5 with thinking on): the completion
  // starts with reasoning.
  bool ends_in_reasoning = false;
};

struct TextStreamOptions {
  bool skip_special_tokens = true;
  std::vector<std::string> stop_strings;
};

// Streaming detokenization of one generation: complete UTF-8 only, stop strings applied across
// token boundaries (the stop string itself is not emitted).
class TextStream {
 public:
  virtual ~TextStream() = default;
  virtual std::string Feed(int32_t id) = 0;
  // End of stream: what was held back.
  virtual std::string Finish() = 0;
  virtual bool stopped() const = 0;
  // Index into TextStreamOptions::stop_strings of the string that ended the stream.
  virtual std::optional<size_t> stop_index() const = 0;
};

class TextCodec {
 public:
  // `tokenizer` overrides where the tokenizer is read from: "" = `model_dir` (no tokenizer when
  // it has no tokenizer.json), "none" = ids only, else a tokenizer.json or a folder with one.
  static StatusOr<std::unique_ptr<TextCodec>> ForModel(const std::string& model_dir,
                                                       const std::string& tokenizer = "");
  virtual ~TextCodec() = default;
  virtual bool has_tokenizer() const = 0;
  virtual bool has_chat_template() const = 0;
  virtual StatusOr<std::vector<int32_t>> Encode(const std::string& text) const = 0;
  virtual std::string Decode(const std::vector<int32_t>& ids, bool skip_special_tokens = true) const = 0;
  // Renders and encodes a chat with the tokenizer's chat template (ChatRequestOptions says how
  // special tokens inside messages are treated).
  virtual StatusOr<ChatEncoding> EncodeChat(const std::vector<ChatTurn>& turns,
                                            const ChatRequestOptions& options) const = 0;
  virtual std::unique_ptr<TextStream> NewStream(TextStreamOptions opt) const = 0;

  // One stream for the CLI: complete UTF-8 text for newly generated ids; Flush returns what was
  // held back.
  std::string Feed(const std::vector<int32_t>& ids);
  std::string Flush();

 private:
  std::unique_ptr<TextStream> cli_stream_;
};

}  // namespace specd::cli
