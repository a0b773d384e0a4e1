#include "runtime/token_loader.h"

#include <fmt/format.h>
#include <glob.h>

#include <algorithm>

#include "runtime/core/error.h"
#include "runtime/token_file.h"

namespace tandem {

std::vector<std::string> expand_token_shards(const std::string& pattern) {
  glob_t g{};
  int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> paths;
  if (rc == 0) paths.assign(g.gl_pathv, g.gl_pathv + g.gl_pathc);
  ::globfree(&g);
  if (rc == GLOB_NOMATCH || (rc == 0 && paths.empty()))
    throw UserError(fmt::format("no token files match {} (make them with `tandem data tokenize`)", pattern));
  if (rc != 0) throw UserError(fmt::format("cannot expand the pattern {} (glob error {})", pattern, rc));
  // glob sorts by the locale's collation; byte order is the same everywhere.
  std::sort(paths.begin(), paths.end());
  return paths;
}

TokenLoader::TokenLoader(std::vector<std::string> shards, const TokenLoaderOptions& options)
    : paths_(std::move(shards)), opt_(options) {
  if (paths_.empty()) throw UserError("the token loader was given no shards");
  if (opt_.batch_size <= 0 || opt_.seq_len <= 0)
    throw UserError(fmt::format("batch_size and seq_len must be positive (got {} and {})", opt_.batch_size,
                                opt_.seq_len));
  TANDEM_CHECK(opt_.world_size > 0 && opt_.rank >= 0 && opt_.rank < opt_.world_size,
               fmt::format("rank {} of world size {}", opt_.rank, opt_.world_size));
  int64_t need = global_stride() + 1;
  for (const std::string& path : paths_) {
    int64_t count = read_token_header(path).count;
    if (count < need)
      throw UserError(fmt::format("token shard {} has {} tokens, too few for one global batch: batch_size {} x "
                                  "seq_len {} x world size {} + 1 = {} tokens",
                                  path, count, opt_.batch_size, opt_.seq_len, opt_.world_size, need));
    counts_.push_back(count);
  }
}

bool TokenLoader::global_batch_fits(const TokenLoaderState& s) const {
  return s.position + global_stride() + 1 <= counts_[s.shard];
}

// Every shard holds at least one global batch (checked at construction), so
// one step to the next shard always lands on a batch that fits.
void TokenLoader::move_to_fitting_batch() {
  if (!global_batch_fits(state_)) state_ = {(state_.shard + 1) % static_cast<int64_t>(paths_.size()), 0};
}

void TokenLoader::load_shard(int64_t shard) {
  if (loaded_ == shard) return;
  tokens_ = read_token_file(paths_[shard]);
  if (static_cast<int64_t>(tokens_.size()) != counts_[shard])
    throw UserError(fmt::format("token shard {} changed while training: it had {} tokens, now {}", paths_[shard],
                                counts_[shard], tokens_.size()));
  loaded_ = shard;
}

void TokenLoader::next(int32_t* inputs, int32_t* targets) {
  load_shard(state_.shard);
  int64_t n = opt_.batch_size * opt_.seq_len;
  const uint16_t* tokens = tokens_.data() + state_.position + opt_.rank * n;  // (B*T + 1)
  for (int64_t i = 0; i < n; i++) {
    inputs[i] = tokens[i];
    targets[i] = tokens[i + 1];
  }
  state_.position += global_stride();
  move_to_fitting_batch();
}

int64_t TokenLoader::num_batches() const {
  int64_t total = 0;
  for (int64_t count : counts_) total += (count - 1) / global_stride();
  return total;
}

void TokenLoader::seek(int64_t index) {
  TANDEM_CHECK(index >= 0, fmt::format("batch index {}", index));
  index %= num_batches();
  for (int64_t shard = 0;; shard++) {
    int64_t batches = (counts_[shard] - 1) / global_stride();
    if (index < batches) {
      state_ = {shard, index * global_stride()};
      return;
    }
    index -= batches;
  }
}

void TokenLoader::restore(const TokenLoaderState& state) {
  int64_t shards = static_cast<int64_t>(paths_.size());
  if (state.shard < 0 || state.shard >= shards || state.position < 0 || state.position > counts_[state.shard])
    throw UserError(fmt::format("data cursor (shard {}, position {}) does not fit the {} token shards starting with {}; "
                                "were the shards changed since the checkpoint?",
                                state.shard, state.position, shards, paths_[0]));
  state_ = state;
  move_to_fitting_batch();  // a cursor from another world size may sit past the last batch that fits
}

}  // namespace tandem
