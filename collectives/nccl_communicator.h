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
//
// Note [Comm event times]
// A Work on a comm stream (NCCL's, the simulated CUDA network's) owns two
// timing events recorded on that stream around its operation: the start
// after whatever the stream waits for first (the producer's event), the end
// after the operation; the end is also what wait() polls and wait_stream()
// waits on. Inside a group the Works share the group's pair (Note [Comm
// groups]). run_interval turns the pair into steady-clock times, once the end
// has completed, through an anchor: a timing event whose host time is known.
// The communicator's EventClock records the first anchor on an idle stream of
// its own and waits for it when it is built (its host time is the middle of
// the shortest of kFirstAnchorTries such waits, so it is off by at most half
// that wait: microseconds); from then on it records a new anchor every
// kAnchorPeriod and, once that one completed, times it from the previous one
// on the device clock. So no later anchor waits, event and anchor stay
// seconds apart (cudaEventElapsedTime's float milliseconds keep microseconds
// there), and reading a finished Work's times costs no synchronization: the
// caller already waited for the Work.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>

#include "collectives/communicator.h"

namespace tandem::collectives {

// The stream `comm` runs its operations on: the NCCL comm stream, or the CPU
// stream for a backend that uses none (Gloo), so that callers need not ask
// which backend they hold.
Stream comm_stream(Communicator& comm);

// Host times of events on one CUDA device (Note [Comm event times]). CUDA
// builds only, as are the classes below.
class EventClock {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::seconds kAnchorPeriod{2};
  static constexpr int kFirstAnchorTries = 3;

  struct Anchor {
    std::shared_ptr<CUevent_st> event;  // a timing event, completed
    Clock::time_point host;             // when it completed, on the host's steady clock
  };

  explicit EventClock(Device device);  // waits for the first anchor
  // The anchor to read events recorded from now on; thread-safe, never waits.
  std::shared_ptr<const Anchor> anchor();

 private:
  Device device_;
  Stream stream_;  // runs nothing but anchors, so they complete as soon as recorded
  std::mutex mutex_;
  std::shared_ptr<const Anchor> current_;
  std::shared_ptr<CUevent_st> next_;  // recorded, not yet timed from current_
};

// The two events of one operation, or of one group, on a comm stream (Note
// [Comm event times]).
class OpEvents {
 public:
  using Clock = EventClock::Clock;

  OpEvents(Device device, std::shared_ptr<const EventClock::Anchor> anchor);
  void record_start(const Stream& stream);
  void record_end(const Stream& stream);
  // record_end ran: before it, the end event is not yet the operation's
  // (an event never recorded counts as completed).
  bool recorded() const { return recorded_.load(); }
  CUevent_st* end() const { return end_.get(); }
  // The steady-clock times of the start and end, once the end has completed;
  // false before. Never waits.
  bool interval(Clock::time_point* start, Clock::time_point* end) const;

 private:
  std::shared_ptr<CUevent_st> start_, end_;
  std::shared_ptr<const EventClock::Anchor> anchor_;
  std::atomic<bool> recorded_{false};
};

}  // namespace tandem::collectives
