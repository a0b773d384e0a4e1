#include "runtime/sampler.h"

#include <fmt/format.h>

#include <numeric>

#include "runtime/core/error.h"
#include "runtime/core/philox.h"

namespace tandem {

std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  uint64_t key = seed ^ (0xD1B54A32D192ED03ull * static_cast<uint64_t>(epoch + 1));
  // Fisher-Yates from the top; 64 random bits per draw keep the modulo bias
  // below 2^-40 for any data set that fits in memory.
  for (int64_t i = n - 1; i > 0; i--) {
    Philox4 r = philox4x32(static_cast<uint64_t>(i), key);
    uint64_t bits = (uint64_t{r.v[0]} << 32) | r.v[1];
    int64_t j = static_cast<int64_t>(bits % static_cast<uint64_t>(i + 1));
    std::swap(perm[i], perm[j]);
  }
  return perm;
}

EpochSampler::EpochSampler(int64_t dataset_size, int64_t batch_size, uint64_t seed, int rank, int world_size)
    : size_(dataset_size), batch_(batch_size), seed_(seed), rank_(rank), world_(world_size) {
  if (batch_size <= 0) throw UserError(fmt::format("batch_size must be positive, got {}", batch_size));
  TANDEM_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "bad rank/world size");
  steps_per_epoch_ = dataset_size / (batch_size * world_size);
  if (steps_per_epoch_ == 0)
    throw UserError(fmt::format("batch_size {} x world size {} is larger than the data set ({} samples)",
                                batch_size, world_size, dataset_size));
}

void EpochSampler::shuffle_for(int64_t epoch) {
  if (epoch == epoch_) return;
  perm_ = epoch_permutation(size_, seed_, epoch);
  epoch_ = epoch;
}

std::vector<int64_t> EpochSampler::batch(int64_t step) {
  int64_t epoch = step / steps_per_epoch_, k = step % steps_per_epoch_;
  shuffle_for(epoch);
  int64_t begin = k * batch_ * world_ + rank_ * batch_;
  return std::vector<int64_t>(perm_.begin() + begin, perm_.begin() + begin + batch_);
}

}  // namespace tandem
