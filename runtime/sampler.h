// Which samples each rank trains on at each step.
//
// Every epoch has one permutation of the data set, drawn from Philox keyed
// by (seed, epoch), the same on every rank. Step k of an epoch covers the
// global batch perm[k*G, (k+1)*G) with G = batch_size * world_size, and rank
// r takes its r-th slice of batch_size. So the union of the ranks' batches at
// a step is the single-process batch of size G, whatever the world size.
// The last partial global batch of an epoch is dropped.
#pragma once

#include <cstdint>
#include <vector>

namespace tandem {

class EpochSampler {
 public:
  EpochSampler(int64_t dataset_size, int64_t batch_size, uint64_t seed, int rank = 0, int world_size = 1);

  int64_t steps_per_epoch() const { return steps_per_epoch_; }
  // The sample indices of this rank's batch at global step `step`.
  std::vector<int64_t> batch(int64_t step);

 private:
  void shuffle_for(int64_t epoch);

  int64_t size_, batch_, steps_per_epoch_;
  uint64_t seed_;
  int rank_, world_;
  int64_t epoch_ = -1;
  std::vector<int64_t> perm_;
};

// The permutation of [0, n) for `epoch`, a pure function of (seed, epoch).
std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch);

}  // namespace tandem
