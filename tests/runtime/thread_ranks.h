// Data-parallel tests with ranks as threads of one process: a shared
// in-memory store, a Gloo communicator per rank, and a small synthetic
// classification set.
#pragma once

#include <exception>
#include <functional>
#include <thread>
#include <vector>

#include "collectives/communicator.h"
#include "runtime/core/philox.h"
#include "runtime/idx_dataset.h"
#include "runtime/parallel/process_group.h"
#include "support/testing.h"

namespace tandem::testing {

// 8x8 "images" of random values, 10 random classes.
inline ImageDataset synthetic(int64_t count, uint64_t seed) {
  ImageDataset ds;
  ds.count = count;
  ds.rows = ds.cols = 8;
  ds.images = random_vector(count * 64, seed);
  ds.labels.resize(count);
  for (int64_t i = 0; i < count; i++) ds.labels[i] = static_cast<int32_t>(philox4x32(i, seed).v[0] % 10);
  return ds;
}

// Runs `body` on `world` threads, each with its rank's process group (no
// communicator in a world of one); rethrows the first rank's exception.
inline void for_each_rank(int world, const std::function<void(const parallel::ProcessGroup&)>& body) {
  auto store = collectives::make_memory_store();
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(world);
  for (int r = 0; r < world; r++) {
    threads.emplace_back([&, r] {
      try {
        parallel::ProcessGroup pg;
        pg.env.rank = r;
        pg.env.world_size = world;
        if (world > 1) {
          collectives::CommOptions options;
          options.timeout = std::chrono::seconds(30);
          pg.store = store;
          pg.comm = collectives::make_gloo_communicator(store, r, world, options);
        }
        body(pg);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace tandem::testing
