#include "server/cli_text.h"

namespace specd::cli {
namespace {

class NoTokenizer final : public TextCodec {
 public:
  bool has_tokenizer() const override { return false; }
  StatusOr<std::vector<int32_t>> Encode(const std::string&) override {
    return FailedPrecondition("this model has no tokenizer.json (or specd was built without the tokenizer); "
                              "pass --prompt-ids");
  }
  std::string Decode(const std::vector<int32_t>&) override { return {}; }
  std::string Feed(const std::vector<int32_t>&) override { return {}; }
  std::string Flush() override { return {}; }
};

}  // namespace

StatusOr<std::unique_ptr<TextCodec>> TextCodec::ForModel(const std::string&) {
  return std::unique_ptr<TextCodec>(new NoTokenizer());
}

}  // namespace specd::cli
