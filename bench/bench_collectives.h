// `tandem bench collectives`: nccl-tests-style timing of all_reduce,
// all_gather, reduce_scatter and broadcast from 8 B to 256 MB, run on every
// rank of a launched job (`tandem launch --nproc-per-node N -- tandem bench
// collectives`). algbw = bytes / time; busbw scales algbw by the factor that
// makes it comparable to the link bandwidth (all_reduce 2(n-1)/n,
// all_gather and reduce_scatter (n-1)/n, broadcast 1), as nccl-tests does.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "collectives/communicator.h"

namespace tandem::bench {

struct CollectiveResult {
  std::string op;
  int64_t bytes = 0;  // per rank: the buffer all_reduce/broadcast reduce, the output of all_gather, the input of reduce_scatter
  double us = 0;      // mean time per call, the slowest rank's
  double algbw_gbs = 0, busbw_gbs = 0;
};

struct CollectiveOptions {
  int64_t min_bytes = 8;
  int64_t max_bytes = int64_t{256} << 20;
  collectives::Millis timeout{std::chrono::seconds(120)};
};

std::vector<CollectiveResult> run_collective_bench(collectives::Communicator& comm, Device device,
                                                   const CollectiveOptions& options);
void print_collective_table(const std::vector<CollectiveResult>& results, const collectives::Communicator& comm);
nlohmann::json collective_json(const std::vector<CollectiveResult>& results, const collectives::Communicator& comm);

}  // namespace tandem::bench
