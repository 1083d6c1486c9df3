#include "fixtures.h"

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace specd::testing {

std::string Qwen3Dir() { return std::string(SPECD_FIXTURES) + "/tokenizer/qwen3"; }

std::string TestData(const std::string& name) {
  return std::string(SPECD_TOKENIZER_TEST_DATA) + "/" + name;
}

std::string ReadText(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return std::move(ss).str();
}

nlohmann::json ReadJson(const std::string& path) { return nlohmann::json::parse(ReadText(path)); }

const Tokenizer& Qwen3() {
  static const std::unique_ptr<Tokenizer> tok = [] {
    auto t = Tokenizer::Load(Qwen3Dir());
    if (!t.ok()) throw std::runtime_error(t.status().ToString());
    return std::move(t).value();
  }();
  return *tok;
}

}  // namespace specd::testing
