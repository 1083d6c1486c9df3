// Tokenizer throughput on one core: encodes >= 10 MB of source text as one string and line by
// line, and prints MB/s (1 MB = 1e6 bytes of input text).
//
//   tokenizer_bench TOKENIZER (file or folder) [TEXT_FILE]
//
// Without TEXT_FILE the corpus is the Python standard library: every *.py under
// /usr/lib/python3*/ in sorted path order, UTF-8 files only, joined with "\n" until >= 12 MB.
// It is written to /tmp/specd_tokenizer_corpus.txt so that bench/tokenizer_hf.py measures
// HF tokenizers on the very same bytes.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace {

namespace fs = std::filesystem;
constexpr size_t kCorpusBytes = 12'000'000;
constexpr const char* kCorpusPath = "/tmp/specd_tokenizer_corpus.txt";

std::string ReadFile(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return std::move(ss).str();
}

std::string BuildCorpus() {
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& root : fs::directory_iterator("/usr/lib", ec)) {
    if (!root.path().filename().string().starts_with("python3")) continue;
    for (auto it = fs::recursive_directory_iterator(root.path(), fs::directory_options::skip_permission_denied, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_regular_file(ec) && it->path().extension() == ".py") files.push_back(it->path());
    }
  }
  std::sort(files.begin(), files.end());
  std::string corpus;
  for (const auto& p : files) {
    std::string text = ReadFile(p);
    if (specd::utf8::FirstInvalidByte(text)) continue;
    if (!corpus.empty()) corpus += '\n';
    corpus += text;
    if (corpus.size() >= kCorpusBytes) break;
  }
  return corpus;
}

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s TOKENIZER [TEXT_FILE]\n", argv[0]);
    return 2;
  }
  const auto t_load = std::chrono::steady_clock::now();
  auto tok = specd::Tokenizer::Load(argv[1]);
  if (!tok.ok()) {
    std::fprintf(stderr, "load failed: %s\n", tok.status().message().c_str());
    return 1;
  }
  const double load_s = Seconds(t_load, std::chrono::steady_clock::now());

  std::string text;
  if (argc >= 3) {
    text = ReadFile(argv[2]);
  } else {
    text = BuildCorpus();
    std::ofstream(kCorpusPath, std::ios::binary) << text;
    std::printf("corpus: %s\n", kCorpusPath);
  }
  const double mb = text.size() / 1e6;
  std::printf("load: %.2f s; text: %.2f MB\n", load_s, mb);

  // Whole text: the first run starts with an empty BPE cache, later runs find it warm.
  size_t tokens = 0;
  for (int run = 0; run < 3; ++run) {
    const auto a = std::chrono::steady_clock::now();
    auto ids = (*tok)->Encode(text);
    const auto b = std::chrono::steady_clock::now();
    if (!ids.ok()) {
      std::fprintf(stderr, "encode failed: %s\n", ids.status().message().c_str());
      return 1;
    }
    tokens = ids->size();
    std::printf("whole text  run %d: %8.2f MB/s  (%.3f s, %zu tokens)\n", run, mb / Seconds(a, b),
                Seconds(a, b), tokens);
  }

  std::vector<std::string_view> lines;
  for (size_t start = 0;;) {
    const size_t nl = text.find('\n', start);
    lines.push_back(std::string_view(text).substr(start, nl == std::string::npos ? std::string::npos : nl - start));
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  std::vector<int32_t> ids;
  for (int run = 0; run < 3; ++run) {
    size_t line_tokens = 0;
    const auto a = std::chrono::steady_clock::now();
    for (std::string_view line : lines) {
      ids.clear();
      if (!(*tok)->EncodeTo(line, &ids).ok()) return 1;
      line_tokens += ids.size();
    }
    const auto b = std::chrono::steady_clock::now();
    std::printf("line by line run %d: %8.2f MB/s  (%.3f s, %zu lines, %zu tokens)\n", run,
                mb / Seconds(a, b), Seconds(a, b), lines.size(), line_tokens);
  }
  return 0;
}
