// Text for the CLI: the model folder's tokenizer.json when this build has the tokenizer, else
// ids only (fixture models ship no tokenizer; their text is empty).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "util/status.h"

namespace specd::cli {

class TextCodec {
 public:
  static StatusOr<std::unique_ptr<TextCodec>> ForModel(const std::string& model_dir);
  virtual ~TextCodec() = default;
  virtual bool has_tokenizer() const = 0;
  virtual StatusOr<std::vector<int32_t>> Encode(const std::string& text) = 0;
  virtual std::string Decode(const std::vector<int32_t>& ids) = 0;
  // Streaming: complete UTF-8 text for newly generated ids; Flush returns what was held back.
  virtual std::string Feed(const std::vector<int32_t>& ids) = 0;
  virtual std::string Flush() = 0;
};

}  // namespace specd::cli
