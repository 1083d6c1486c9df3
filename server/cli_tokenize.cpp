// `specd tokenize` (docs/server.md): encode texts with a tokenizer.json and decode them back.
#include "server/cli_tokenize.h"

#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#ifdef SPECD_HAVE_TOKENIZER
#include "tokenizer/tokenizer.h"
#endif

namespace specd::cli {

Status RunTokenize(const TokenizeArgs& a) {
#ifndef SPECD_HAVE_TOKENIZER
  (void)a;
  return Unimplemented("this build of specd has no tokenizer (configure with -DSPECD_TOKENIZER=ON)");
#else
  if (a.text.empty() == a.input.empty()) return InvalidArgument("give exactly one of --text or --input");
  SPECD_ASSIGN_OR_RETURN(auto tok, Tokenizer::Load(a.tokenizer));
  std::vector<std::string> texts;
  if (!a.input.empty()) {
    std::ifstream in(a.input);
    if (!in) return NotFound("cannot open {}", a.input);
    nlohmann::json doc = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded() || !doc.is_array()) return InvalidArgument("{}: expected a JSON list of strings", a.input);
    for (const auto& v : doc) {
      if (!v.is_string()) return InvalidArgument("{}: expected a JSON list of strings", a.input);
      texts.push_back(v.get<std::string>());
    }
  } else {
    texts.push_back(a.text);
  }
  nlohmann::json out;
  out["cases"] = nlohmann::json::array();
  for (const auto& t : texts) {
    SPECD_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok->Encode(t));
    out["cases"].push_back({{"ids", ids}, {"decoded", tok->Decode(ids, /*skip_special_tokens=*/false)}});
  }
  std::puts(out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  return Status::Ok();
#endif
}

}  // namespace specd::cli
