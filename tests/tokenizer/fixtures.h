// Shared access to the committed tokenizer fixtures (loaded once per test binary).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"

namespace specd::testing {

std::string Qwen3Dir();          // tests/fixtures/tokenizer/qwen3
std::string TestData(const std::string& name);  // tests/tokenizer/data/<name>
std::string ReadText(const std::string& path);
nlohmann::json ReadJson(const std::string& path);

// The Qwen3 tokenizer loaded from its folder (with tokenizer_config.json).
const Tokenizer& Qwen3();

}  // namespace specd::testing
