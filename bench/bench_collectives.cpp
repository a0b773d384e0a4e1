#include "bench/bench_collectives.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <functional>

namespace tandem::bench {

namespace {

using collectives::Buffer;
using collectives::ReduceOp;
using collectives::Work;

double bus_factor(const std::string& op, int n) {
  if (op == "all_reduce") return 2.0 * (n - 1) / n;
  if (op == "all_gather" || op == "reduce_scatter") return static_cast<double>(n - 1) / n;
  return 1.0;
}

// Mean microseconds per call over `iters` calls issued back to back, each
// waited for; the slowest rank's mean (a collective ends when all ranks do).
double time_op(const std::function<std::shared_ptr<Work>()>& op, int iters, collectives::Communicator& comm,
               Device device, collectives::Millis timeout) {
  op()->wait(timeout);  // warm-up: connections, algorithm setup
  comm.barrier()->wait(timeout);
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; i++) op()->wait(timeout);
  double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() / iters;
  Tensor t = Tensor::from_vector({static_cast<float>(us)}, {1});
  if (device.is_cuda()) t = t.to(device);
  comm.all_reduce(Buffer::of(t), ReduceOp::max)->wait(timeout);
  return t.to_vector()[0];
}

}  // namespace

std::vector<CollectiveResult> run_collective_bench(collectives::Communicator& comm, Device device,
                                                   const CollectiveOptions& options) {
  int n = comm.size();
  int64_t max_elems = options.max_bytes / 4;
  Tensor big = Tensor::zeros({max_elems * n}, DType::f32, device);  // all_gather output / reduce_scatter input
  Tensor small = Tensor::zeros({max_elems}, DType::f32, device);
  std::vector<CollectiveResult> results;
  for (const char* op : {"all_reduce", "all_gather", "reduce_scatter", "broadcast"}) {
    for (int64_t bytes = options.min_bytes; bytes <= options.max_bytes; bytes *= 2) {
      int64_t count = std::max<int64_t>(1, bytes / 4);  // f32 elements per rank
      // all_gather and reduce_scatter move `bytes` in total, bytes / n per rank.
      int64_t per_rank = std::string(op) == "all_reduce" || std::string(op) == "broadcast" ? count : std::max<int64_t>(1, count / n);
      Buffer whole = Buffer::of(big.view(0, {per_rank * n})), part = Buffer::of(small.view(0, {per_rank}));
      std::function<std::shared_ptr<Work>()> fn;
      std::string name = op;
      if (name == "all_reduce") fn = [&] { return comm.all_reduce(part, ReduceOp::sum); };
      if (name == "broadcast") fn = [&] { return comm.broadcast(part, 0); };
      if (name == "all_gather") fn = [&] { return comm.all_gather(whole, part); };
      if (name == "reduce_scatter") fn = [&] { return comm.reduce_scatter(part, whole, ReduceOp::sum); };
      // Enough calls to average out noise, few for the large sizes.
      int iters = static_cast<int>(std::clamp<int64_t>((int64_t{64} << 20) / bytes, 3, 50));
      CollectiveResult r{name, bytes};
      r.us = time_op(fn, iters, comm, device, options.timeout);
      r.algbw_gbs = bytes / (r.us * 1e-6) / 1e9;
      r.busbw_gbs = r.algbw_gbs * bus_factor(name, n);
      results.push_back(r);
    }
  }
  return results;
}

void print_collective_table(const std::vector<CollectiveResult>& results, const collectives::Communicator& comm) {
  fmt::print("# {} ranks, backend {}, f32; time is the slowest rank's mean\n", comm.size(), comm.backend());
  fmt::print("{:<16} {:>12} {:>12} {:>10} {:>10}\n", "op", "size (B)", "time (us)", "algbw GB/s", "busbw GB/s");
  for (const CollectiveResult& r : results)
    fmt::print("{:<16} {:>12} {:>12.1f} {:>10.3f} {:>10.3f}\n", r.op, r.bytes, r.us, r.algbw_gbs, r.busbw_gbs);
}

nlohmann::json collective_json(const std::vector<CollectiveResult>& results, const collectives::Communicator& comm) {
  nlohmann::json rows = nlohmann::json::array();
  for (const CollectiveResult& r : results)
    rows.push_back({{"op", r.op}, {"bytes", r.bytes}, {"us", r.us}, {"algbw_gbs", r.algbw_gbs}, {"busbw_gbs", r.busbw_gbs}});
  return {{"world_size", comm.size()}, {"backend", comm.backend()}, {"results", rows}};
}

}  // namespace tandem::bench
