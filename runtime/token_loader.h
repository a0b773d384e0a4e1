// Batches of token sequences for language models, read sequentially from
// llm.c token shards (runtime/token_file.h), as llm.c's DataLoader does.
//
// Note [Token batches and ranks]
// A batch is B*T+1 consecutive tokens of a shard: inputs are the first B*T,
// targets the same shifted by one (targets[i] = tokens[i+1]). A global batch
// is the W ranks' batches side by side: global batch g of a shard starts at
// token g*B*T*W, and rank r reads B*T+1 tokens from g*B*T*W + r*B*T. A
// shard holds floor((N-1) / (B*T*W)) global batches; when the next one
// would run past the shard's end, every rank moves on together to the next
// shard (after the last, the first again) and starts at its offset r*B*T.
// So ranks never read the same input token in a step, and the ranks'
// inputs (and targets) at a step, concatenated in rank order, are exactly
// what one rank with world size 1 and batch W*B reads at that step.
//
// Unlike llm.c, the cursor holds the start of the global batch, not the
// rank's own offset: it is the same on every rank, so the one data cursor a
// checkpoint stores (written by rank 0) resumes every rank exactly.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tandem {

struct TokenLoaderOptions {
  int64_t batch_size = 0;  // B: sequences per rank
  int64_t seq_len = 0;     // T: tokens per sequence
  int rank = 0;
  int world_size = 1;
};

// Where a loader is: the shard, and the token offset in it of the next
// global batch (the same on every rank).
struct TokenLoaderState {
  int64_t shard = 0;
  int64_t position = 0;
  bool operator==(const TokenLoaderState&) const = default;
};

// The files matching `pattern` (glob(3): "data/fortunes_train*.bin"), sorted
// by name. Throws UserError naming the pattern when nothing matches.
std::vector<std::string> expand_token_shards(const std::string& pattern);

class TokenLoader {
 public:
  // Reads every shard's header now, so that a bad or too small shard is an
  // error at start (UserError naming it and the sizes), not hours later.
  TokenLoader(std::vector<std::string> shards, const TokenLoaderOptions& options);

  // Fills this rank's next batch and advances: inputs, targets (B, T) each,
  // host memory, int32 as the embedding takes them.
  void next(int32_t* inputs, int32_t* targets);

  // Batches per rank in one pass over all shards (for evaluation: reset(),
  // then this many next() calls read each shard once and end where they began).
  int64_t num_batches() const;

  TokenLoaderState state() const { return state_; }
  // Continues exactly where `state()` was taken, on this or any rank. Throws
  // UserError when the state does not fit these shards.
  void restore(const TokenLoaderState& state);
  void reset() { state_ = {}; }
  // Moves to batch `index` of what next() reads from the start, passes
  // counted on (index mod num_batches() within a pass): for a trainer whose
  // batch is a pure function of the step (runtime/train_task.h).
  void seek(int64_t index);

  int64_t batch_size() const { return opt_.batch_size; }
  int64_t seq_len() const { return opt_.seq_len; }
  const std::vector<std::string>& shards() const { return paths_; }

 private:
  int64_t global_stride() const { return opt_.batch_size * opt_.seq_len * opt_.world_size; }
  bool global_batch_fits(const TokenLoaderState& s) const;
  void move_to_fitting_batch();
  void load_shard(int64_t shard);

  std::vector<std::string> paths_;
  std::vector<int64_t> counts_;  // tokens per shard, from the headers
  TokenLoaderOptions opt_;
  TokenLoaderState state_;
  // Only the shard being read is in memory; shards can be hundreds of MB.
  int64_t loaded_ = -1;
  std::vector<uint16_t> tokens_;
};

}  // namespace tandem
