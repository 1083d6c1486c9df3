#include "tokenizer/stop_strings.h"

#include <algorithm>

namespace specd {

StopStringMatcher::StopStringMatcher(std::vector<std::string> stop_strings) {
  for (size_t i = 0; i < stop_strings.size(); ++i) {
    if (stop_strings[i].empty()) continue;
    max_len_ = std::max(max_len_, stop_strings[i].size());
    stops_.push_back(std::move(stop_strings[i]));
    original_index_.push_back(i);
  }
}

std::string StopStringMatcher::Push(std::string_view chunk) {
  if (stopped()) return {};
  if (stops_.empty()) return std::string(chunk);
  std::string buf = std::move(held_);
  held_.clear();
  buf.append(chunk);

  // Any match ends inside `chunk`: one ending earlier would have been found by an earlier
  // Push, since its start was held back.
  size_t best_end = std::string::npos, best_start = 0, best = 0;
  for (size_t s = 0; s < stops_.size(); ++s) {
    const size_t pos = buf.find(stops_[s]);
    if (pos == std::string::npos) continue;
    const size_t end = pos + stops_[s].size();
    if (end < best_end || (end == best_end && pos < best_start)) {
      best_end = end;
      best_start = pos;
      best = s;
    }
  }
  if (best_end != std::string::npos) {
    matched_ = original_index_[best];
    buf.resize(best_start);
    return buf;
  }

  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t hold = std::min(buf.size(), max_len_ - 1);
  for (; hold > 0; --hold) {
    const std::string_view tail = std::string_view(buf).substr(buf.size() - hold);
    const bool prefix = std::any_of(stops_.begin(), stops_.end(),
                                    [&](const std::string& s) { return s.starts_with(tail); });
    if (prefix) break;
  }
  held_.assign(buf, buf.size() - hold, hold);
  buf.resize(buf.size() - hold);
  return buf;
}

std::string StopStringMatcher::Flush() {
  std::string out = std::move(held_);
  held_.clear();
  if (stopped()) return {};
  return out;
}

}  // namespace specd
