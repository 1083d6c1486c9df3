#include "speculative/draft_vocab.h"

#include <algorithm>
#include <fstream>
#include <numeric>

#include <nlohmann/json.hpp>

namespace specd {

StatusOr<std::vector<int32_t>> LoadDraftVocab(const std::string& path, int64_t vocab_size) {
  std::ifstream in(path);
  if (!in) return NotFound("draft vocabulary {}: cannot open", path);
  const nlohmann::json doc = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("ids") || !doc["ids"].is_array()) {
    return InvalidArgument("draft vocabulary {}: expected a JSON object with an \"ids\" list", path);
  }
  std::vector<int32_t> ids;
  for (const auto& v : doc["ids"]) {
    if (!v.is_number_integer()) return InvalidArgument("draft vocabulary {}: ids must be integers", path);
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= vocab_size) {
      return InvalidArgument("draft vocabulary {}: id {} is outside the model's vocabulary [0, {})", path, id,
                             vocab_size);
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  if (ids.empty()) return InvalidArgument("draft vocabulary {}: no ids", path);
  std::sort(ids.begin(), ids.end());
  if (std::adjacent_find(ids.begin(), ids.end()) != ids.end()) {
    return InvalidArgument("draft vocabulary {}: an id appears twice", path);
  }
  return ids;
}

std::vector<int32_t> TopDraftVocab(const std::vector<int64_t>& counts, int64_t size) {
  std::vector<int32_t> order(counts.size());
  std::iota(order.begin(), order.end(), 0);
  const auto n = static_cast<size_t>(std::clamp<int64_t>(size, 0, static_cast<int64_t>(counts.size())));
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n), order.end(),
                    [&](int32_t a, int32_t b) { return counts[a] != counts[b] ? counts[a] > counts[b] : a < b; });
  order.resize(n);
  std::sort(order.begin(), order.end());
  return order;
}

}  // namespace specd
