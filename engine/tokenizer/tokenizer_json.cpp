#include "tokenizer/tokenizer_json.h"

#include <nlohmann/json.hpp>

namespace specd::tokenizer_internal {
namespace {

using json = nlohmann::json;

Status Unsupported(std::string_view what, std::string_view detail) {
  return Unimplemented("tokenizer.json: unsupported {}: {}", what, detail);
}

std::string TypeOf(const json& j) {
  if (j.is_object() && j.contains("type") && j["type"].is_string()) {
    return j["type"].get<std::string>();
  }
  return j.dump().substr(0, 80);
}

bool BoolOr(const json& j, const char* key, bool dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  return j[key].get<bool>();
}

bool EmptyOrNull(const json& j, const char* key) {
  return !j.contains(key) || j[key].is_null() || j[key].get<std::string>().empty();
}

Status ParseNormalizer(const json& n, TokenizerSpec& spec) {
  if (n.is_null()) return Status::Ok();
  const std::string type = TypeOf(n);
  if (type == "NFC") {
    spec.nfc = true;
    return Status::Ok();
  }
  if (type == "Sequence") {
    // A sequence is fine as long as it only composes NFC (idempotent).
    for (const json& item : n.at("normalizers")) {
      if (TypeOf(item) != "NFC") {
        return Unsupported("normalizer", fmt::format("'{}' inside Sequence (only NFC)", TypeOf(item)));
      }
      spec.nfc = true;
    }
    return Status::Ok();
  }
  return Unsupported("normalizer", fmt::format("'{}' (supported: NFC or none)", type));
}

Status ParseByteLevelPre(const json& b) {
  if (BoolOr(b, "add_prefix_space", false)) {
    return Unsupported("pre_tokenizer", "ByteLevel with add_prefix_space=true");
  }
  if (BoolOr(b, "use_regex", true)) {
    return Unsupported("pre_tokenizer",
                       "ByteLevel with use_regex=true (only Split regex + ByteLevel(use_regex=false))");
  }
  return Status::Ok();
}

Status ParsePreTokenizer(const json& p, TokenizerSpec& spec) {
  constexpr std::string_view kShape = "expected Sequence[Split(Regex, Isolated), ByteLevel]";
  if (p.is_null()) return Unsupported("pre_tokenizer", fmt::format("none ({})", kShape));
  if (TypeOf(p) != "Sequence") {
    return Unsupported("pre_tokenizer", fmt::format("'{}' ({})", TypeOf(p), kShape));
  }
  const json& items = p.at("pretokenizers");
  if (items.size() != 2 || TypeOf(items[0]) != "Split" || TypeOf(items[1]) != "ByteLevel") {
    std::string got;
    for (const json& it : items) got += (got.empty() ? "" : ", ") + TypeOf(it);
    return Unsupported("pre_tokenizer", fmt::format("Sequence[{}] ({})", got, kShape));
  }
  const json& split = items[0];
  const json& pattern = split.at("pattern");
  if (!pattern.contains("Regex")) {
    return Unsupported("pre_tokenizer", "Split with a String pattern (only Regex)");
  }
  if (split.at("behavior").get<std::string>() != "Isolated") {
    return Unsupported("pre_tokenizer",
                       fmt::format("Split behavior '{}' (only Isolated)", split["behavior"].get<std::string>()));
  }
  if (BoolOr(split, "invert", false)) return Unsupported("pre_tokenizer", "Split with invert=true");
  spec.split_pattern = pattern["Regex"].get<std::string>();
  return ParseByteLevelPre(items[1]);
}

Status ParseDecoder(const json& d) {
  if (TypeOf(d) == "ByteLevel") return Status::Ok();
  return Unsupported("decoder", fmt::format("'{}' (only ByteLevel)", d.is_null() ? "none" : TypeOf(d)));
}

Status ParseModel(const json& m, TokenizerSpec& spec) {
  const std::string type = TypeOf(m);
  if (type != "BPE") return Unsupported("model", fmt::format("type '{}' (only BPE)", type));
  if (m.contains("dropout") && !m["dropout"].is_null()) {
    return Unsupported("model", "BPE dropout (non-deterministic)");
  }
  if (!EmptyOrNull(m, "continuing_subword_prefix") || !EmptyOrNull(m, "end_of_word_suffix")) {
    return Unsupported("model", "BPE with continuing_subword_prefix / end_of_word_suffix");
  }
  if (BoolOr(m, "byte_fallback", false)) return Unsupported("model", "BPE byte_fallback=true");
  spec.ignore_merges = BoolOr(m, "ignore_merges", false);

  const json& vocab = m.at("vocab");
  if (!vocab.is_object()) return InvalidArgument("tokenizer.json: model.vocab is not an object");
  spec.vocab.reserve(vocab.size());
  for (const auto& [tok, id] : vocab.items()) {
    spec.vocab.emplace_back(tok, id.get<int32_t>());
  }
  const json& merges = m.at("merges");
  spec.merges.reserve(merges.size());
  for (const json& mg : merges) {
    // Two on-disk forms exist: "a b" (older files) and ["a", "b"] (tokenizers >= 0.20).
    if (mg.is_string()) {
      const std::string s = mg.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        return InvalidArgument("tokenizer.json: malformed merge '{}'", s);
      }
      spec.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (mg.is_array() && mg.size() == 2) {
      spec.merges.emplace_back(mg[0].get<std::string>(), mg[1].get<std::string>());
    } else {
      return InvalidArgument("tokenizer.json: malformed merge {}", mg.dump());
    }
  }
  return Status::Ok();
}

Status ParseAddedTokens(const json& arr, TokenizerSpec& spec) {
  if (arr.is_null()) return Status::Ok();
  for (const json& t : arr) {
    AddedTokenSpec a;
    a.id = t.at("id").get<int32_t>();
    a.content = t.at("content").get<std::string>();
    a.special = BoolOr(t, "special", false);
    a.lstrip = BoolOr(t, "lstrip", false);
    a.rstrip = BoolOr(t, "rstrip", false);
    a.normalized = BoolOr(t, "normalized", !a.special);
    if (BoolOr(t, "single_word", false)) {
      return Unsupported("added token", fmt::format("'{}' with single_word=true", a.content));
    }
    if (a.content.empty()) return InvalidArgument("tokenizer.json: added token {} is empty", a.id);
    spec.added_tokens.push_back(std::move(a));
  }
  return Status::Ok();
}

Status ParseAll(const json& root, TokenizerSpec& spec) {
  if (!root.is_object()) return InvalidArgument("tokenizer.json: top level is not an object");
  for (const char* key : {"truncation", "padding"}) {
    if (root.contains(key) && !root[key].is_null()) {
      return Unsupported(key, "must be null (it would change what Encode returns)");
    }
  }
  if (!root.contains("model")) return InvalidArgument("tokenizer.json: no 'model'");
  SPECD_RETURN_IF_ERROR(ParseNormalizer(root.value("normalizer", json()), spec));
  SPECD_RETURN_IF_ERROR(ParsePreTokenizer(root.value("pre_tokenizer", json()), spec));
  SPECD_RETURN_IF_ERROR(ParseDecoder(root.value("decoder", json())));
  SPECD_RETURN_IF_ERROR(ParseModel(root["model"], spec));
  // post_processor only matters for add_special_tokens=true, which Encode does not do.
  return ParseAddedTokens(root.value("added_tokens", json()), spec);
}

// tokenizer_config.json stores special tokens either as a string or as a serialized AddedToken.
std::optional<std::string> TokenContent(const json& root, const char* key) {
  if (!root.contains(key)) return std::nullopt;
  const json& v = root[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return std::nullopt;
}

}  // namespace

StatusOr<TokenizerSpec> ParseTokenizerJson(std::string_view text) {
  TokenizerSpec spec;
  try {
    const json root = json::parse(text);
    SPECD_RETURN_IF_ERROR(ParseAll(root, spec));
  } catch (const json::exception& e) {
    return InvalidArgument("tokenizer.json: malformed: {}", e.what());
  }
  return spec;
}

StatusOr<TokenizerConfigSpec> ParseTokenizerConfigJson(std::string_view text) {
  TokenizerConfigSpec cfg;
  try {
    const json root = json::parse(text);
    if (!root.is_object()) return InvalidArgument("tokenizer_config.json: top level is not an object");
    if (root.contains("chat_template")) {
      const json& ct = root["chat_template"];
      if (ct.is_string()) {
        cfg.chat_template = ct.get<std::string>();
      } else if (ct.is_array()) {
        // Named templates: the one called "default" is what apply_chat_template uses.
        for (const json& named : ct) {
          if (named.value("name", "") == "default") cfg.chat_template = named.at("template").get<std::string>();
        }
      }
    }
    cfg.eos_token = TokenContent(root, "eos_token");
    cfg.pad_token = TokenContent(root, "pad_token");
  } catch (const json::exception& e) {
    return InvalidArgument("tokenizer_config.json: malformed: {}", e.what());
  }
  return cfg;
}

}  // namespace specd::tokenizer_internal
