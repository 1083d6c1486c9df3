#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe_model.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/chat_template_qwen35.h"
#include "tokenizer/nfc.h"
#include "tokenizer/regex_splitter.h"
#include "tokenizer/tokenizer_json.h"
#include "tokenizer/utf8.h"

namespace specd {

using tokenizer_internal::AddedToken;
using tokenizer_internal::AddedTokenMatcher;
using tokenizer_internal::BpeModel;
using tokenizer_internal::Nfc;
using tokenizer_internal::Piece;
using tokenizer_internal::RegexSplitter;
using tokenizer_internal::LiteralRange;
using tokenizer_internal::Segment;
using tokenizer_internal::TokenizerSpec;

struct Tokenizer::Impl {
  std::unique_ptr<Nfc> nfc;
  std::unique_ptr<RegexSplitter> splitter;
  std::unique_ptr<BpeModel> model;
  AddedTokenMatcher raw_added;         // normalized=false: matched on the text as given
  AddedTokenMatcher normalized_added;  // normalized=true: matched after NFC

  // Per id: the bytes it decodes to, its vocab string, its flags. Flat arrays indexed by id.
  std::string decode_bytes;
  std::vector<uint32_t> decode_offset;  // size vocab_size + 1
  std::vector<std::string> token_string;
  std::vector<uint8_t> flags;           // kKnown | kSpecial
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> added_by_content;
  std::unordered_map<std::string_view, int32_t> vocab_by_string;  // views into token_string

  static constexpr uint8_t kKnown = 1;
  static constexpr uint8_t kSpecial = 2;
};

namespace {

StatusOr<std::string> ReadFile(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) return NotFound("cannot open {}", p.string());
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return DataLoss("error reading {}", p.string());
  return std::move(ss).str();
}

// HF's ByteLevel decoder: a token whose characters are all ByteLevel-mapped decodes to those
// bytes, any other token (e.g. an added token with a space) to its own UTF-8.
std::string DecodedBytes(const std::string& token) {
  if (auto bytes = byte_level::CharsToBytes(token)) return std::move(*bytes);
  return token;
}

// HF does not take an added token's id from the file: it uses the model's id when the content
// is in the vocabulary, else the next id after the vocabulary and the tokens added so far.
// Files saved by HF always agree; one that does not would encode differently in HF than the
// ids it lists, so it is refused rather than guessed at.
Status CheckAddedTokenIds(const TokenizerSpec& spec) {
  std::unordered_map<std::string_view, int32_t> vocab;
  vocab.reserve(spec.vocab.size());
  for (const auto& [tok, id] : spec.vocab) vocab.emplace(tok, id);
  const int64_t vocab_len = static_cast<int64_t>(spec.vocab.size());
  std::unordered_map<std::string_view, int32_t> added;
  int64_t max_added = -1;
  for (const auto& a : spec.added_tokens) {
    int64_t want;
    if (auto it = added.find(a.content); it != added.end()) {
      want = it->second;
    } else if (auto iv = vocab.find(a.content); iv != vocab.end()) {
      want = iv->second;
    } else if (max_added < 0) {
      want = vocab_len;
    } else {
      want = (max_added >= vocab_len || vocab_len == 0) ? max_added + 1 : vocab_len;
    }
    if (a.id != want) {
      return InvalidArgument(
          "tokenizer.json: added token '{}' is listed with id {} but HF tokenizers assigns it id {} "
          "(inconsistent file)", a.content, a.id, want);
    }
    added.emplace(a.content, a.id);
    max_added = std::max<int64_t>(max_added, a.id);
  }
  return Status::Ok();
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& file_or_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path path(file_or_dir);
  if (!fs::exists(path, ec)) return NotFound("tokenizer: {} does not exist", file_or_dir);
  if (!fs::is_directory(path, ec)) {
    SPECD_ASSIGN_OR_RETURN(std::string json, ReadFile(path));
    return FromJson(json);
  }
  SPECD_ASSIGN_OR_RETURN(std::string json, ReadFile(path / "tokenizer.json"));
  std::string config;
  if (fs::exists(path / "tokenizer_config.json", ec)) {
    SPECD_ASSIGN_OR_RETURN(config, ReadFile(path / "tokenizer_config.json"));
  }
  SPECD_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, FromJson(json, config));
  // Newer transformers save the template next to the config instead of inside it.
  if (tok->chat_template_.empty() && fs::exists(path / "chat_template.jinja", ec)) {
    SPECD_ASSIGN_OR_RETURN(tok->chat_template_, ReadFile(path / "chat_template.jinja"));
    tok->chat_format_ = DetectChatFormat(tok->chat_template_);
  }
  return tok;
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view tokenizer_json,
                                                          std::string_view tokenizer_config_json) {
  SPECD_ASSIGN_OR_RETURN(TokenizerSpec spec, tokenizer_internal::ParseTokenizerJson(tokenizer_json));
  auto impl = std::make_unique<Impl>();
  if (spec.nfc) {
    SPECD_ASSIGN_OR_RETURN(impl->nfc, Nfc::Create());
  }
  SPECD_ASSIGN_OR_RETURN(impl->splitter, RegexSplitter::Create(spec.split_pattern));
  SPECD_ASSIGN_OR_RETURN(impl->model, BpeModel::Build(spec.vocab, spec.merges, spec.ignore_merges));

  SPECD_RETURN_IF_ERROR(CheckAddedTokenIds(spec));
  int32_t max_id = -1;
  for (const auto& [tok, id] : spec.vocab) max_id = std::max(max_id, id);
  for (const auto& a : spec.added_tokens) max_id = std::max(max_id, a.id);
  const size_t size = static_cast<size_t>(max_id) + 1;
  impl->token_string.resize(size);
  impl->flags.assign(size, 0);
  for (auto& [tok, id] : spec.vocab) {
    impl->token_string[id] = std::move(tok);
    impl->flags[id] |= Impl::kKnown;
  }
  std::vector<AddedToken> raw, normalized;
  std::string scratch;
  for (auto& a : spec.added_tokens) {
    // An added token overrides the model's entry for the same id, as HF's decode does.
    impl->token_string[a.id] = a.content;
    impl->flags[a.id] = Impl::kKnown | (a.special ? Impl::kSpecial : 0);
    impl->added_by_content[a.content] = a.id;
    AddedToken t{a.id, a.content, a.lstrip, a.rstrip, a.special};
    if (a.normalized && impl->nfc) {
      if (utf8::FirstInvalidByte(t.content)) {
        return InvalidArgument("tokenizer.json: added token {} is not UTF-8", a.id);
      }
      SPECD_ASSIGN_OR_RETURN(std::string_view nc, impl->nfc->Normalize(t.content, scratch));
      t.content = std::string(nc);
    }
    (a.normalized ? normalized : raw).push_back(std::move(t));
  }
  impl->raw_added = AddedTokenMatcher(std::move(raw));
  impl->normalized_added = AddedTokenMatcher(std::move(normalized));

  impl->decode_offset.resize(size + 1);
  for (size_t id = 0; id < size; ++id) {
    impl->decode_offset[id] = static_cast<uint32_t>(impl->decode_bytes.size());
    if (impl->flags[id] & Impl::kKnown) impl->decode_bytes += DecodedBytes(impl->token_string[id]);
  }
  impl->decode_offset[size] = static_cast<uint32_t>(impl->decode_bytes.size());
  impl->vocab_by_string.reserve(size);
  for (size_t id = 0; id < size; ++id) {
    if (impl->flags[id] & Impl::kKnown) {
      impl->vocab_by_string.emplace(impl->token_string[id], static_cast<int32_t>(id));
    }
  }

  std::unique_ptr<Tokenizer> tok(new Tokenizer(std::move(impl)));
  if (!tokenizer_config_json.empty()) {
    SPECD_ASSIGN_OR_RETURN(auto cfg, tokenizer_internal::ParseTokenizerConfigJson(tokenizer_config_json));
    tok->chat_template_ = std::move(cfg.chat_template);
    tok->chat_format_ = DetectChatFormat(tok->chat_template_);
    if (cfg.eos_token) {
      tok->eos_id_ = tok->TokenToId(*cfg.eos_token);
      if (!tok->eos_id_) {
        return InvalidArgument("tokenizer_config.json: eos_token '{}' is not in the vocabulary", *cfg.eos_token);
      }
    }
    if (cfg.pad_token) tok->pad_id_ = tok->TokenToId(*cfg.pad_token);
  }
  return tok;
}

StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> ids;
  SPECD_RETURN_IF_ERROR(EncodeTo(text, &ids));
  return ids;
}

Status Tokenizer::EncodeTo(std::string_view text, std::vector<int32_t>* out) const {
  return EncodeWithLiterals(text, {}, out);
}

Status Tokenizer::EncodeWithLiterals(std::string_view text, std::span<const RenderedChat::Range> literal_ranges,
                                     std::vector<int32_t>* out) const {
  if (text.size() > INT32_MAX) return InvalidArgument("Encode: text of {} bytes exceeds 2 GiB", text.size());
  if (auto bad = utf8::FirstInvalidByte(text)) {
    return InvalidArgument("Encode: invalid UTF-8 at byte offset {} (byte 0x{:02X})", *bad,
                           static_cast<unsigned char>(text[*bad]));
  }
  const size_t before = out->size();
  std::vector<LiteralRange> literal;
  literal.reserve(literal_ranges.size());
  for (const auto& r : literal_ranges) literal.push_back({r.begin, r.end});
  std::vector<Segment> segments;
  impl_->raw_added.Split(text, segments, literal);
  std::string normalized_scratch;
  std::vector<Segment> inner;
  for (const Segment& seg : segments) {
    if (seg.id >= 0) {
      out->push_back(seg.id);
      continue;
    }
    std::string_view s = text.substr(seg.begin, seg.end - seg.begin);
    if (impl_->nfc) {
      auto nfc = impl_->nfc->Normalize(s, normalized_scratch);
      if (!nfc.ok()) {
        out->resize(before);
        return nfc.status();
      }
      s = *nfc;
    }
    Status st;
    if (impl_->normalized_added.empty()) {
      st = EncodeOrdinary(s, out);
    } else {
      inner.clear();
      // Normalisation moves byte offsets, so literal ranges cannot be mapped into `s`: a segment
      // that holds any literal byte is matched with no special tokens at all (never less safe).
      const bool touches = std::any_of(literal.begin(), literal.end(), [&](const LiteralRange& r) {
        return r.begin < seg.end && seg.begin < r.end;
      });
      static constexpr LiteralRange kAll{0, SIZE_MAX};
      impl_->normalized_added.Split(s, inner, touches ? std::span<const LiteralRange>(&kAll, 1)
                                                      : std::span<const LiteralRange>());
      for (const Segment& in : inner) {
        if (in.id >= 0) {
          out->push_back(in.id);
        } else if (st = EncodeOrdinary(s.substr(in.begin, in.end - in.begin), out); !st.ok()) {
          break;
        }
      }
    }
    if (!st.ok()) {
      out->resize(before);
      return st;
    }
  }
  return Status::Ok();
}

Status Tokenizer::EncodeOrdinary(std::string_view text, std::vector<int32_t>* out) const {
  std::vector<Piece> pieces;
  SPECD_RETURN_IF_ERROR(impl_->splitter->Split(text, pieces));
  for (const Piece& p : pieces) impl_->model->Encode(text.substr(p.begin, p.end - p.begin), *out);
  return Status::Ok();
}

std::string_view Tokenizer::TokenBytes(int32_t id) const {
  if (!IsKnown(id)) return {};
  const uint32_t b = impl_->decode_offset[id], e = impl_->decode_offset[id + 1];
  return std::string_view(impl_->decode_bytes).substr(b, e - b);
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (skip_special_tokens && IsSpecial(id)) continue;
    bytes += TokenBytes(id);
  }
  std::string out;
  out.reserve(bytes.size());
  utf8::AppendLossy(bytes, out);
  return out;
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (auto it = impl_->added_by_content.find(token); it != impl_->added_by_content.end()) {
    return it->second;
  }
  if (auto it = impl_->vocab_by_string.find(token); it != impl_->vocab_by_string.end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (!IsKnown(id)) return std::nullopt;
  return impl_->token_string[id];
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->flags.size()); }

bool Tokenizer::IsKnown(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->flags.size() && (impl_->flags[id] & Impl::kKnown);
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return IsKnown(id) && (impl_->flags[id] & Impl::kSpecial);
}

StatusOr<RenderedChat> Tokenizer::RenderChat(std::span<const ChatMessage> messages,
                                             const ChatOptions& options) const {
  switch (chat_format_) {
    case ChatFormat::kQwen3:
      return RenderQwen3ChatParts(messages, options);
    case ChatFormat::kQwen35:
      return RenderQwen35ChatParts(messages, options);
    case ChatFormat::kUnknown:
      break;
  }
  return NoChatTemplate();
}

StatusOr<std::string> Tokenizer::ApplyChatTemplate(std::span<const ChatMessage> messages,
                                                   const ChatOptions& options) const {
  SPECD_ASSIGN_OR_RETURN(RenderedChat chat, RenderChat(messages, options));
  return std::move(chat.text);
}

StatusOr<Tokenizer::EncodedChat> Tokenizer::EncodeChat(std::span<const ChatMessage> messages,
                                                       const ChatOptions& options, ContentSpecials specials) const {
  SPECD_ASSIGN_OR_RETURN(RenderedChat chat, RenderChat(messages, options));
  EncodedChat out;
  const std::span<const RenderedChat::Range> literal =
      specials == ContentSpecials::kText ? std::span<const RenderedChat::Range>(chat.content)
                                         : std::span<const RenderedChat::Range>();
  SPECD_RETURN_IF_ERROR(EncodeWithLiterals(chat.text, literal, &out.ids));
  out.text = std::move(chat.text);
  return out;
}

Status Tokenizer::NoChatTemplate() const {
  return FailedPrecondition("{}", chat_template_.empty()
                                ? "tokenizer has no chat template (load a folder with tokenizer_config.json)"
                                : "tokenizer's chat template is not one specd implements (only Qwen3's and Qwen3.5's)");
}

}  // namespace specd
