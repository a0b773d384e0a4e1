// `tandem bench overlap`: how much of a DDP step's gradient all-reduce is
// hidden behind backward. An MLP of `layers` square Linear layers (width x
// width, ReLU between, 10 classes) runs timed steps; each step measures
//   backward_ms   forward, loss, then backward alone, with no communication;
//   allreduce_ms  the step's bucket all-reduces issued back to back, no compute;
//   exposed_ms    a DDP step (backward feeding a parallel::Reducer through
//                 Context::grad_ready, then finish()): the time from the end
//                 of backward on the device to the end of communication;
// and reports exposed / allreduce. Two modes:
//   - launched (`tandem launch --nproc-per-node N -- tandem bench overlap`):
//     the world's communicator, Gloo on the CPU (NCCL with --device cuda);
//   - simulated (`--simulated`): one process with the simulated network of
//     runtime/parallel/simulated_communicator.h, on the GPU when one is
//     visible, so overlap can be checked with one GPU (or none).
//
// Note [Overlap bound]
// A bucket's all-reduce starts when backward has written its last gradient,
// and the last bucket (the first layer's) only when backward ends, so
// exposed / allreduce is at least the last bucket's share of the bytes; when
// a bucket takes longer on the wire than backward takes to fill the next
// one, the link falls behind and more is exposed. So by default every layer
// is its own bucket (its weight and its own bias: a bucket that reached into
// the layer below would wait for that layer's backward too) and every layer,
// the first included (in_features = width), is the same size: with L layers
// and all-reduce no longer than backward, exposed / allreduce is about
// 1 / (L + 1) plus the per-operation overheads. With PyTorch's 25 MB buckets
// over 4 MB layers the floor would be 6 / L.
//
// The exposed time is measured on the host after synchronizing the compute
// stream (backward done) and again after finish() made it wait for the
// communication: on the GPU Reducer::finish returns without blocking (it
// only makes the compute stream wait), so its own exposed_ms would read ~0.
// On the CPU the two are the same.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "collectives/communicator.h"

namespace tandem::bench {

struct OverlapOptions {
  bool simulated = false;
  std::string device;        // "", "cpu", "cuda", "cuda:N"; empty: simulated uses a GPU if visible, launched the CPU
  int world = 8;             // simulated world size
  double gbps = 0;           // simulated bandwidth; 0: calibrated so that allreduce = comm_fraction * backward
  double latency_us = 20;    // simulated latency per operation
  double comm_fraction = 0.8;
  int64_t width = 0;         // 0: 1024 on the GPU, 512 on the CPU
  int layers = 0;            // 0: 24 on the GPU, 12 on the CPU
  int64_t batch = 0;         // per rank; 0: 4096 on the GPU, 256 on the CPU
  int steps = 5;             // timed steps (each measures all three)
  int warmup = 2;
  double bucket_mb = 0;      // 0: one layer per bucket (Note [Overlap bound])
  collectives::Millis timeout{std::chrono::seconds(120)};
};

struct OverlapStep {
  double backward_ms = 0, allreduce_ms = 0, exposed_ms = 0, step_ms = 0;
  double exposed_pct() const { return allreduce_ms > 0 ? 100.0 * exposed_ms / allreduce_ms : 0.0; }
  double comm_to_backward() const { return backward_ms > 0 ? allreduce_ms / backward_ms : 0.0; }
};

struct OverlapReport {
  std::string mode;     // "simulated" or the backend ("gloo", "nccl")
  std::string device;
  int world_size = 1;
  double gbps = 0, latency_us = 0;  // simulated only
  int64_t width = 0, batch = 0;
  int layers = 0, buckets = 0;
  int64_t grad_bytes = 0;
  std::vector<OverlapStep> steps;  // the slowest rank's numbers, step by step
  OverlapStep median;              // per column
};

// The options with every 0 ("pick for me") replaced by the default for `device`.
OverlapOptions resolve_overlap_options(OverlapOptions options, Device device);

// Runs the benchmark over `comm` (every rank calls it). `options` must be
// resolved. With a simulated communicator made here when options.simulated,
// pass comm = nullptr (the bandwidth may be calibrated first).
OverlapReport run_overlap_bench(std::shared_ptr<collectives::Communicator> comm, Device device,
                                const OverlapOptions& options);

void print_overlap_table(const OverlapReport& report);
nlohmann::json overlap_json(const OverlapReport& report);

// The CLI entry: picks the mode and the device, runs, prints on rank 0 and
// writes `json_out` there when given.
void run_overlap_command(const OverlapOptions& options, const std::string& json_out);

}  // namespace tandem::bench
