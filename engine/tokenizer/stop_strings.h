// Stop strings over a stream of text chunks. The stream ends at the first stop string to be
// completed (earliest end; at equal ends the earlier start, i.e. the longer one), which makes
// the result independent of how the text was chunked. Only a tail that could still grow
// into a stop string is held back.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace specd {

class StopStringMatcher {
 public:
  // Empty stop strings are ignored.
  explicit StopStringMatcher(std::vector<std::string> stop_strings = {});

  // Takes the next chunk; returns the text that is now safe to emit (everything before a
  // match once stopped). After a match, further input is ignored.
  std::string Push(std::string_view chunk);
  // End of stream: returns the held-back tail (it can no longer become a stop string).
  std::string Flush();

  bool stopped() const { return matched_.has_value(); }
  // Index into the constructor's list of the stop string that matched.
  std::optional<size_t> matched_index() const { return matched_; }
  size_t held_bytes() const { return held_.size(); }

 private:
  std::vector<std::string> stops_;
  std::vector<size_t> original_index_;
  size_t max_len_ = 0;
  std::string held_;
  std::optional<size_t> matched_;
};

}  // namespace specd
