// What the NCCL backend adds to the Communicator interface: the stream its
// operations run on.
//
// Note [NCCL comm stream]
// A NCCL communicator runs every operation on its own non-blocking stream,
// which knows nothing of the streams that wrote the buffers. Before issuing,
// the caller makes it wait for the producer:
//     Event ready = Event::create(device);
//     ready.record(compute);
//     ready.wait_on(comm_stream(comm));
//     auto work = comm.all_reduce(Buffer::of(grads), ReduceOp::avg);
// and makes a consumer wait for the result without blocking the host with
// work->wait_stream(consumer, timeout). This is the DDP reducer's hot path
// (DESIGN.md); on the CPU every one of these calls is a no-op.
#pragma once

#include "collectives/communicator.h"

namespace tandem::collectives {

// The stream `comm` runs its operations on: the NCCL comm stream, or the CPU
// stream for a backend that uses none (Gloo), so that callers need not ask
// which backend they hold.
Stream comm_stream(Communicator& comm);

}  // namespace tandem::collectives
