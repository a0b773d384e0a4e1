// A simulated network: one process plays rank 0 of a world of `world_size`
// identical ranks, so that communication/computation overlap can be measured
// and tested with one GPU (or none) instead of a cluster.
//
// Note [Simulated network]
// Every rank of the pretended world holds the same data and issues the same
// calls, so the result of each collective is known without the others:
//   all_reduce    sum: x * n; avg and max: x
//   broadcast     x (the root holds what we hold)
//   all_gather    n copies of the input, one per block
//   reduce_scatter  our block (block 0) of the input; times n for sum
//   send, recv    the data stay as they are (the peer holds the same)
//   barrier       nothing
// What is simulated is the time: the ranks share one link of `gbytes_per_s`
// per direction, so an operation completes `latency_us` plus the bytes a
// ring algorithm puts on the wire per rank, divided by the bandwidth, after
// it starts (2(n-1)/n * bytes for all_reduce, (n-1)/n * bytes of the whole
// buffer for all_gather and reduce_scatter, the buffer for broadcast, send
// and recv; a barrier costs the latency alone; an empty buffer costs
// nothing, as with Gloo and NCCL). Operations run in issue order, each
// starting when the one before it completed and, on the GPU, when the comm
// stream reached it: one link, no concurrency between operations.
//
// On the CPU a comm thread applies the data change and sleeps until the
// operation's completion time (as Gloo's comm thread would be busy moving
// data), so a caller's compute overlaps it exactly as it would overlap Gloo;
// the thread uses no CPU while it waits, so on a machine with few cores the
// measured overlap is the schedule's, not a fight for cores. Work::run_interval
// gives the interval the link's schedule gave the operation.
//
// On CUDA the delay runs on the communicator's own non-blocking comm stream
// (Note [Delay on a stream] in kernels/sim_delay.h), followed by the data
// change; a Work is a pair of timing events recorded around them, as NCCL's
// (Note [Comm event times] in collectives/nccl_communicator.h). The host
// never blocks in an issue; Work::wait polls the end event up to its
// timeout; wait_stream makes a consumer stream wait on it; run_interval
// reads both as host times once it completed. Groups (Note [Comm groups])
// change nothing on one link: group_start and group_end do nothing.
//
// Note [Simulated comm stream]
// Communicator::comm_stream() returns the simulated comm stream, so the
// Reducer orders each bucket after its gradients exactly as with NCCL (Note
// [NCCL comm stream]). For callers that issue without recording events,
// follow_stream(comm, compute) makes every later operation of `comm` wait,
// on the comm stream, for the work queued on `compute` when it is issued (as
// PyTorch's ProcessGroupNCCL syncs its stream with the current stream).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "collectives/communicator.h"

namespace tandem::parallel {

struct SimulatedNetwork {
  double gbytes_per_s = 25.0;  // per rank and direction, 1e9 bytes per second
  double latency_us = 20.0;    // per operation
};

enum class SimulatedOp { all_reduce, broadcast, all_gather, reduce_scatter, barrier, send, recv };

// Bytes one rank sends for `op` in a ring over `world_size` ranks, where
// `bytes` is the buffer all_reduce/broadcast/send/recv move, the output of
// all_gather or the input of reduce_scatter (the whole, n blocks).
double ring_wire_bytes(SimulatedOp op, size_t bytes, int world_size);

// Nanoseconds the network takes for an operation of `bytes` (as
// ring_wire_bytes counts them): latency + wire bytes / bandwidth; 0 for an
// empty buffer other than a barrier's.
int64_t simulated_duration_ns(const SimulatedNetwork& network, SimulatedOp op, size_t bytes, int world_size);

// Rank 0 of a world of `world_size` identical ranks (Note [Simulated
// network]); buffers on `device` (cpu, or a CUDA device in a CUDA build).
// Throws UserError for a non-positive world size, bandwidth or a negative latency.
std::shared_ptr<collectives::Communicator> make_simulated_communicator(int world_size, Device device,
                                                                       SimulatedNetwork network);

// True when `comm` was made by make_simulated_communicator.
bool is_simulated(const collectives::Communicator& comm);

// The stream `comm` runs its operations on: comm.comm_stream().
Stream simulated_comm_stream(collectives::Communicator& comm);

// Note [Simulated comm stream]: later operations of the simulated `comm` first
// wait for what `producer` has queued when they are issued. A no-op for
// other communicators and on the CPU. Pass the CPU stream to stop.
void follow_stream(collectives::Communicator& comm, const Stream& producer);

}  // namespace tandem::parallel
