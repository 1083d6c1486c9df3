// Prompt-lookup drafting: match the longest suffix n-gram (n <= max_n) of the context earlier in
// the context and propose the tokens that followed its most recent earlier occurrence.
#include <algorithm>

#include "speculative/drafter.h"

namespace specd {
namespace {

class NgramDrafter final : public Drafter {
 public:
  explicit NgramDrafter(const NgramOptions& o) : opt_(o) {}
  std::string name() const override { return "ngram"; }
  Status AddSequence(int) override { return Status::Ok(); }
  void RemoveSequence(int) override {}
  Status Accept(const std::vector<DraftOutcome>&) override { return Status::Ok(); }

  Status Propose(const std::vector<DraftRequest>& reqs, std::vector<DraftProposal>& out) override {
    out.assign(reqs.size(), {});
    for (size_t r = 0; r < reqs.size(); ++r) {
      const auto& ctx = *reqs[r].context;
      const int64_t n_ctx = static_cast<int64_t>(ctx.size());
      if (reqs[r].k <= 0) continue;
      for (int n = std::min<int64_t>(opt_.max_n, n_ctx - 1); n >= opt_.min_n; --n) {
        const auto suffix = ctx.end() - n;
        // Most recent earlier occurrence whose continuation exists.
        for (int64_t start = n_ctx - n - 1; start >= 0; --start) {
          if (!std::equal(suffix, ctx.end(), ctx.begin() + start)) continue;
          const int64_t from = start + n;
          const int64_t take = std::min<int64_t>(reqs[r].k, n_ctx - from);
          out[r].tokens.assign(ctx.begin() + from, ctx.begin() + from + take);
          break;
        }
        if (!out[r].tokens.empty()) break;
      }
    }
    return Status::Ok();
  }

 private:
  NgramOptions opt_;
};

}  // namespace

std::unique_ptr<Drafter> MakeNgramDrafter(const NgramOptions& opt) { return std::make_unique<NgramDrafter>(opt); }

}  // namespace specd
