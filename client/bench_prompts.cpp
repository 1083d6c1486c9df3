#include "client/bench_prompts.h"

#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

namespace specd::client {

bool LoadPromptsJsonl(const std::string& path, std::vector<BenchPrompt>* out, std::string* error) {
  std::ifstream in(path);
  if (!in) {
    *error = "cannot read " + path;
    return false;
  }
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(n) + ": ";
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      *error = where + "not a JSON object";
      return false;
    }
    BenchPrompt p;
    if (j.contains("prompt") && j["prompt"].is_string()) {
      p.text = j["prompt"].get<std::string>();
    } else if (j.contains("prompt_ids") && j["prompt_ids"].is_array()) {
      for (const auto& v : j["prompt_ids"]) {
        if (!v.is_number_integer()) {
          *error = where + "prompt_ids must be integers";
          return false;
        }
        p.ids.push_back(v.get<int32_t>());
      }
    } else {
      *error = where + "needs \"prompt\" (string) or \"prompt_ids\" (list)";
      return false;
    }
    if (j.contains("max_tokens")) {
      if (!j["max_tokens"].is_number_unsigned()) {
        *error = where + "max_tokens must be a positive integer";
        return false;
      }
      p.max_tokens = j["max_tokens"].get<uint32_t>();
    }
    out->push_back(std::move(p));
  }
  if (out->empty()) {
    *error = path + ": no prompts";
    return false;
  }
  return true;
}

std::vector<BenchPrompt> BuiltinPrompts(bool text) {
  std::vector<BenchPrompt> out;
  if (text) {
    for (const char* t : {
             "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
             "The quick brown fox jumps over the lazy dog. The quick brown fox",
             "import argparse\n\nparser = argparse.ArgumentParser(description=",
             "Speculative decoding drafts several tokens and verifies them in one forward pass. It",
             "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
             "for i in range(10):\n    for j in range(10):\n        print(i, j)\n",
             "Once upon a time, in a small village by the sea, there lived",
             "SELECT name, count(*) FROM users WHERE active = 1 GROUP BY name ORDER BY",
             "# Summary\n\nThis document describes the design of the scheduler. The scheduler",
             "if __name__ == \"__main__\":\n    main()\n",
             "Q: What is the capital of France?\nA: Paris.\nQ: What is the capital of Italy?\nA:",
             "json.dumps({\"a\": 1, \"b\": [1, 2, 3], \"c\": {\"d\": None}}, indent=",
         }) {
      out.push_back({t, {}, std::nullopt});
    }
    return out;
  }
  std::mt19937 rng(20240611);
  std::uniform_int_distribution<int32_t> tok(3, 499);
  const int lengths[] = {8, 16, 24, 32, 48, 64, 96, 128, 12, 20, 40, 80};
  for (int len : lengths) {
    // A random phrase repeated with variations: realistic prompts repeat themselves.
    std::vector<int32_t> phrase(8);
    for (auto& t : phrase) t = tok(rng);
    BenchPrompt p;
    while (static_cast<int>(p.ids.size()) < len) {
      for (int32_t t : phrase) p.ids.push_back(t);
      p.ids.push_back(tok(rng));
    }
    p.ids.resize(static_cast<size_t>(len));
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace specd::client
