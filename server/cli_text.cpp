#include "server/cli_text.h"

#include <filesystem>

#ifdef SPECD_HAVE_TOKENIZER
#include "tokenizer/incremental_detokenizer.h"
#include "tokenizer/tokenizer.h"
#endif

namespace specd::cli {
namespace {

constexpr const char* kNoTokenizer =
    "model has no tokenizer (no tokenizer.json in the model folder, or specd was built without the "
    "tokenizer); send token ids";

class IdsOnlyStream final : public TextStream {
 public:
  std::string Feed(int32_t) override { return {}; }
  std::string Finish() override { return {}; }
  bool stopped() const override { return false; }
  std::optional<size_t> stop_index() const override { return std::nullopt; }
};

class NoTokenizer final : public TextCodec {
 public:
  bool has_tokenizer() const override { return false; }
  bool has_chat_template() const override { return false; }
  StatusOr<std::vector<int32_t>> Encode(const std::string&) const override {
    return InvalidArgument("{}", kNoTokenizer);
  }
  std::string Decode(const std::vector<int32_t>&, bool) const override { return {}; }
  StatusOr<ChatEncoding> EncodeChat(const std::vector<ChatTurn>&, const ChatRequestOptions&) const override {
    return InvalidArgument("{}", kNoTokenizer);
  }
  std::unique_ptr<TextStream> NewStream(TextStreamOptions) const override {
    return std::make_unique<IdsOnlyStream>();
  }
};

#ifdef SPECD_HAVE_TOKENIZER
class DetokStream final : public TextStream {
 public:
  DetokStream(const Tokenizer& tok, TextStreamOptions o)
      : d_(tok, DetokenizerOptions{o.skip_special_tokens, std::move(o.stop_strings)}) {}
  std::string Feed(int32_t id) override { return d_.Feed(id); }
  std::string Finish() override { return d_.Finish(); }
  bool stopped() const override { return d_.stopped(); }
  std::optional<size_t> stop_index() const override { return d_.stop_index(); }

 private:
  IncrementalDetokenizer d_;
};

class RealTokenizer final : public TextCodec {
 public:
  explicit RealTokenizer(std::unique_ptr<Tokenizer> t) : tok_(std::move(t)) {}
  bool has_tokenizer() const override { return true; }
  bool has_chat_template() const override { return tok_->chat_format() != ChatFormat::kUnknown; }
  StatusOr<std::vector<int32_t>> Encode(const std::string& text) const override { return tok_->Encode(text); }
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special) const override {
    return tok_->Decode(ids, skip_special);
  }
  StatusOr<ChatEncoding> EncodeChat(const std::vector<ChatTurn>& turns, const ChatRequestOptions& o) const override {
    std::vector<ChatMessage> msgs;
    msgs.reserve(turns.size());
    for (const auto& t : turns) {
      ChatMessage m;
      m.role = t.role;
      m.content = t.content;
      m.reasoning_content = t.reasoning;
      for (const auto& c : t.tool_calls) m.tool_calls.push_back(specd::ChatToolCall{c.name, c.arguments_json});
      msgs.push_back(std::move(m));
    }
    ChatOptions opt;
    opt.add_generation_prompt = o.add_generation_prompt;
    opt.enable_thinking = o.enable_thinking;
    opt.tools_json = o.tools_json;
    SPECD_ASSIGN_OR_RETURN(auto enc, tok_->EncodeChat(msgs, opt,
                                                      o.parse_specials_in_content ? Tokenizer::ContentSpecials::kParse
                                                                                  : Tokenizer::ContentSpecials::kText));
    const bool in_reasoning = enc.text.ends_with("<think>\n");
    return ChatEncoding{std::move(enc.text), std::move(enc.ids), in_reasoning};
  }
  std::unique_ptr<TextStream> NewStream(TextStreamOptions opt) const override {
    return std::make_unique<DetokStream>(*tok_, std::move(opt));
  }

 private:
  std::unique_ptr<Tokenizer> tok_;
};
#endif

}  // namespace

StatusOr<std::unique_ptr<TextCodec>> TextCodec::ForModel(const std::string& model_dir, const std::string& tokenizer) {
  if (tokenizer == "none") return std::unique_ptr<TextCodec>(new NoTokenizer());
  std::string path = tokenizer;
  if (path.empty()) {
    std::error_code ec;
    if (!std::filesystem::exists(std::filesystem::path(model_dir) / "tokenizer.json", ec)) {
      return std::unique_ptr<TextCodec>(new NoTokenizer());
    }
    path = model_dir;
  }
#ifdef SPECD_HAVE_TOKENIZER
  SPECD_ASSIGN_OR_RETURN(auto tok, Tokenizer::Load(path));
  return std::unique_ptr<TextCodec>(new RealTokenizer(std::move(tok)));
#else
  if (!tokenizer.empty()) return FailedPrecondition("specd was built without the tokenizer; cannot load {}", path);
  return std::unique_ptr<TextCodec>(new NoTokenizer());
#endif
}

std::string TextCodec::Feed(const std::vector<int32_t>& ids) {
  if (!cli_stream_) cli_stream_ = NewStream({});
  std::string out;
  for (int32_t id : ids) out += cli_stream_->Feed(id);
  return out;
}

std::string TextCodec::Flush() {
  if (!cli_stream_) return {};
  std::string out = cli_stream_->Finish();
  cli_stream_.reset();
  return out;
}

}  // namespace specd::cli
