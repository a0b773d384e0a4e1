// The NCCL backend: collectives over CUDA buffers, on the communicator's own
// stream (Note [NCCL comm stream] in nccl_communicator.h).
//
// Note [NCCL never blocks the host]
// The communicator is created non-blocking (ncclConfig_t::blocking = 0): an
// init or an enqueue may return ncclInProgress, and we poll
// ncclCommGetAsyncError until it settles or the timeout passes. A Work is a
// CUDA event recorded on the comm stream after the operation; wait() polls it
// until the timeout, then aborts the communicator (a NCCL kernel whose peer
// never comes spins on the GPU forever; only an abort stops it) and throws
// CollectiveTimeout naming the ranks that had not issued the operation (Note
// [Naming the missing ranks] in comm_common.h). An aborted communicator fails
// every later call, and every Work that had not completed by then.
//
// Note [NCCL send/recv]
// Outside a group, each send/recv is its own NCCL call on the one comm
// stream, and a NCCL send blocks the stream until the peer's recv runs: a
// ring where every rank sends first deadlocks (unlike Gloo, where posting
// never blocks). Either issue each rank's sends and receives in one group
// (Note [Comm groups]), where they progress together in any order, or order
// them so that each pair meets (even ranks send first, odd ranks receive
// first). A rank may send to itself only inside a group.
//
// Note [NCCL groups]
// NCCL's group belongs to the calling thread: between ncclGroupStart and the
// outermost ncclGroupEnd every NCCL call of that thread is only queued, and
// ncclGroupEnd enqueues them all on the comm stream as one launch (for a
// non-blocking communicator, once ncclCommGetAsyncError stops answering
// ncclInProgress). An event recorded after a call inside the group would
// precede the operation on the stream, and its Work would complete at once.
// So the Works of a group share one pair of events (Note [Comm event times]):
// the start recorded just before ncclGroupEnd, after any stream waits the
// caller added for the group's inputs, the end once the group settled; until
// then the Works refuse waits, and the watchdog counts them in flight. The
// group lives in a thread_local, as NCCL's does, and holds the calls of one
// communicator: a call on another NCCL communicator would join NCCL's group
// unseen, so it is refused, as is creating a communicator (split), which
// NCCL cannot group with operations. An abort from another thread while the
// group holds this communicator's calls (a Work::wait that ran out) marks it
// aborted at once but leaves ncclCommAbort to the group's end: NCCL's queued
// calls still point at the communicator.
#include "collectives/nccl_communicator.h"

#include <fmt/format.h>

#include "collectives/comm_common.h"
#include "collectives/watchdog.h"

#if TANDEM_HAS_CUDA
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <mutex>
#include <thread>

#include "runtime/core/cuda_check.h"
#endif

namespace tandem::collectives {

#if TANDEM_HAS_CUDA

namespace {

using detail::OpDesc;
using detail::OpKind;
using Clock = std::chrono::steady_clock;

constexpr Millis kShutdownGrace{1000};  // how long finalize may flush before we abort
constexpr auto kPollInterval = std::chrono::microseconds(20);

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return ncclFloat32;
    case DType::bf16: return ncclBfloat16;
    case DType::f16: return ncclFloat16;
    case DType::i32: return ncclInt32;
    case DType::u16: break;
  }
  TANDEM_CHECK(false, fmt::format("nccl: cannot reduce {} (f32, bf16, f16 and i32 can)", dtype_name(dtype)));
  return ncclFloat32;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::avg: return ncclAvg;
    case ReduceOp::max: return ncclMax;
  }
  return ncclSum;
}

// Polls until `result` is no longer ncclInProgress (Note [NCCL never blocks
// the host]); false when `deadline` passed first. Errors throw with `call`.
bool settle(ncclComm_t comm, ncclResult_t result, const char* call, Clock::time_point deadline) {
  while (result == ncclInProgress) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(kPollInterval);
    NCCL_CHECK(ncclCommGetAsyncError(comm, &result));
  }
  if (result != ncclSuccess) throw_library_error("NCCL", result, ncclGetErrorString(result), call, __FILE__, __LINE__);
  return true;
}

std::shared_ptr<CUevent_st> new_timing_event(Device device) {
  cudaEvent_t raw = nullptr;
  CUDA_CHECK(cudaSetDevice(device.index));
  CUDA_CHECK(cudaEventCreateWithFlags(&raw, cudaEventDefault));
  return std::shared_ptr<CUevent_st>(raw, [](cudaEvent_t e) { cudaEventDestroy(e); });
}

Clock::duration from_ms(float ms) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::milli>(ms));
}

}  // namespace

// ---- Note [Comm event times]

EventClock::EventClock(Device device) : device_(device), stream_(Stream::create(device)) {
  // The tightest of a few tries (the wait bounds the error): the first wait on a fresh stream can be slow.
  Clock::duration tightest = Clock::duration::max();
  for (int attempt = 0; attempt < kFirstAnchorTries; attempt++) {
    std::shared_ptr<CUevent_st> event = new_timing_event(device);
    Clock::time_point before = Clock::now();
    CUDA_CHECK(cudaEventRecord(event.get(), stream_.cuda()));
    CUDA_CHECK(cudaEventSynchronize(event.get()));
    Clock::time_point after = Clock::now();
    if (after - before < tightest) {
      tightest = after - before;
      current_ = std::make_shared<const Anchor>(Anchor{std::move(event), before + (after - before) / 2});
    }
  }
}

std::shared_ptr<const EventClock::Anchor> EventClock::anchor() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (next_ && cudaEventQuery(next_.get()) == cudaSuccess) {
    float ms = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, current_->event.get(), next_.get()));
    current_ = std::make_shared<const Anchor>(Anchor{std::move(next_), current_->host + from_ms(ms)});
    next_.reset();
  }
  if (!next_ && Clock::now() - current_->host >= kAnchorPeriod) {
    next_ = new_timing_event(device_);
    CUDA_CHECK(cudaEventRecord(next_.get(), stream_.cuda()));
  }
  return current_;
}

OpEvents::OpEvents(Device device, std::shared_ptr<const EventClock::Anchor> anchor)
    : start_(new_timing_event(device)), end_(new_timing_event(device)), anchor_(std::move(anchor)) {}

void OpEvents::record_start(const Stream& stream) { CUDA_CHECK(cudaEventRecord(start_.get(), stream.cuda())); }

void OpEvents::record_end(const Stream& stream) {
  CUDA_CHECK(cudaEventRecord(end_.get(), stream.cuda()));
  recorded_.store(true);
}

bool OpEvents::interval(Clock::time_point* start, Clock::time_point* end) const {
  // The start precedes the end on one stream; the anchor completed before either was recorded.
  if (!recorded_.load() || cudaEventQuery(end_.get()) != cudaSuccess) return false;
  float to_start = 0.f, to_end = 0.f;
  CUDA_CHECK(cudaEventElapsedTime(&to_start, anchor_->event.get(), start_.get()));
  CUDA_CHECK(cudaEventElapsedTime(&to_end, anchor_->event.get(), end_.get()));
  *start = anchor_->host + from_ms(to_start);
  *end = anchor_->host + from_ms(to_end);
  return true;
}

namespace {

// What the communicator and its Works share: the NCCL handle, the comm stream, the seq records.
struct NcclState {
  ncclComm_t comm = nullptr;  // null once aborted
  Device device;
  Stream stream;
  float* barrier_scratch = nullptr;  // the one element a barrier all-reduces
  std::shared_ptr<detail::GroupTracker> tracker;
  std::mutex mutex;  // enqueue vs. abort
  bool aborted = false;
  bool grouped = false;  // an open group holds calls of this communicator (Note [NCCL groups])

  void abort() {
    std::lock_guard<std::mutex> lock(mutex);
    abort_locked();
  }

  // Under `mutex`: fails the communicator, and aborts it unless an open group
  // still holds its calls (then the group's end does, Note [NCCL groups]).
  void abort_locked() {
    aborted = true;
    if (grouped || !comm) return;
    ncclCommAbort(comm);  // best effort: we are already failing
    comm = nullptr;
  }

  // Flush what was issued, for up to kShutdownGrace; abort if it does not settle (a peer is gone).
  ~NcclState() {
    cudaSetDevice(device.index);
    if (comm && aborted) {
      ncclCommAbort(comm);
    } else if (comm) {
      ncclResult_t r = ncclCommFinalize(comm);
      Clock::time_point deadline = Clock::now() + kShutdownGrace;
      while (r == ncclInProgress && Clock::now() < deadline) {
        std::this_thread::sleep_for(kPollInterval);
        if (ncclCommGetAsyncError(comm, &r) != ncclSuccess) break;
      }
      r == ncclSuccess ? ncclCommDestroy(comm) : ncclCommAbort(comm);
    }
    if (barrier_scratch) cudaFree(barrier_scratch);
  }
};

// The calling thread's open group (Note [NCCL groups]).
struct OpenGroup {
  int depth = 0;
  std::shared_ptr<NcclState> state;  // the communicator whose group it is
  std::shared_ptr<OpEvents> events;  // what its Works share; null until the first call
  OpDesc first;                      // names the group in a timeout
  int calls = 0;
};
thread_local OpenGroup t_group;

class NcclWork : public Work {
 public:
  NcclWork(std::shared_ptr<NcclState> state, OpDesc op, std::shared_ptr<OpEvents> events, Watchdog::Id watch)
      : state_(std::move(state)), op_(op), events_(std::move(events)), watch_(watch) {}

  void wait(Millis timeout) override {
    Clock::time_point deadline = Clock::now() + timeout;
    while (!completed()) {
      if (Clock::now() > deadline) {
        Watchdog::process().expired(watch_);  // Note [Watchdog] in watchdog.h
        std::string message = state_->tracker->timeout_message(op_, timeout);
        state_->abort();
        throw CollectiveTimeout(message + "; the NCCL communicator was aborted");
      }
      std::this_thread::sleep_for(kPollInterval);
    }
  }

  bool completed() override {
    if (done_) return true;
    std::lock_guard<std::mutex> lock(state_->mutex);  // the handle is freed by an abort
    TANDEM_CHECK(!state_->aborted, "nccl " + detail::describe(op_) + ": the communicator was aborted before it completed");
    check_launched();
    cudaError_t status = cudaEventQuery(events_->end());
    if (status == cudaErrorNotReady) {
      check_async_error();
      return false;
    }
    CUDA_CHECK(status);
    done_ = true;
    Watchdog::process().end(watch_);
    return true;
  }

  // The host never blocks here, so there is nothing to time out: a stuck
  // operation surfaces at the next wait() (Note [NCCL never blocks the host]).
  void wait_stream(const Stream& stream, Millis timeout) override {
    if (stream.device().is_cpu()) return wait(timeout);
    std::lock_guard<std::mutex> lock(state_->mutex);
    TANDEM_CHECK(!state_->aborted, "nccl: wait_stream on an aborted communicator");
    check_launched();
    CUDA_CHECK(cudaStreamWaitEvent(stream.cuda(), events_->end(), 0));
  }

  bool run_interval(Clock::time_point* start, Clock::time_point* end) override { return events_->interval(start, end); }

 private:
  // Note [NCCL groups]: before its group ended, the operation is not on the stream.
  void check_launched() const {
    TANDEM_CHECK(events_->recorded(), "nccl " + detail::describe(op_) +
                                          ": waited on before its group ended; end the group first (Note [Comm groups])");
  }

  void check_async_error() {
    ncclResult_t async = ncclSuccess;
    NCCL_CHECK(ncclCommGetAsyncError(state_->comm, &async));
    if (async != ncclSuccess && async != ncclInProgress)
      throw_library_error("NCCL", async, ncclGetErrorString(async), detail::describe(op_).c_str(), __FILE__, __LINE__);
  }

  std::shared_ptr<NcclState> state_;
  OpDesc op_;
  std::shared_ptr<OpEvents> events_;  // the end is the completion (Note [Comm event times])
  Watchdog::Id watch_;
  bool done_ = false;
};

class NcclCommunicator final : public detail::DescriptorCommunicator {
 public:
  NcclCommunicator(std::shared_ptr<Store> store, int rank, int size, Device device, const CommOptions& options,
                   std::vector<int> world_ranks)
      : store_(std::move(store)), rank_(rank), size_(size), options_(options), state_(std::make_shared<NcclState>()),
        numbers_(size) {
    check_no_open_group("creating a communicator");
    state_->device = device;
    state_->tracker = std::make_shared<detail::GroupTracker>(store_, rank, size, "nccl", std::move(world_ranks));
    detail::await_all_ranks(*store_, rank, size, "nccl rendezvous", options.timeout);
    ncclUniqueId id;
    if (rank == 0) {
      NCCL_CHECK(ncclGetUniqueId(&id));
      store_->set("nccl/id", Bytes(id.internal, id.internal + sizeof(id.internal)));
    } else {
      Bytes b = store_->get("nccl/id", options.timeout);
      TANDEM_CHECK(b.size() == sizeof(id.internal), "nccl: malformed unique id in the store");
      std::copy(b.begin(), b.end(), id.internal);
    }
    set_current_device(device);
    state_->stream = Stream::create(device);
    clock_ = std::make_unique<EventClock>(device);
    CUDA_CHECK(cudaMalloc(&state_->barrier_scratch, sizeof(float)));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    Clock::time_point deadline = Clock::now() + options.timeout;
    ncclResult_t r = ncclCommInitRankConfig(&state_->comm, size, id, rank, &config);
    if (!settle(state_->comm, r, "ncclCommInitRankConfig", deadline)) {
      state_->abort();
      throw CollectiveTimeout(fmt::format("nccl init of a group of {} did not complete within {} ms on rank {}",
                                          size, options.timeout.count(), rank));
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend() const override { return "nccl"; }
  Stream comm_stream() const override { return state_->stream; }

  // As Gloo's split: (color, key) through the store, then a new communicator
  // under the sub-group's prefix; a negative color returns nullptr.
  std::shared_ptr<Communicator> split(int color, int key) override {
    check_no_open_group("split");
    int64_t id;
    {
      std::lock_guard<std::mutex> lock(issue_mutex_);
      id = ++splits_;
    }
    std::vector<int> members = detail::split_members(*store_, rank_, size_, id, color, key, options_.timeout);
    if (color < 0) return nullptr;
    std::vector<int> world;
    for (int m : members) world.push_back(state_->tracker->world_ranks()[m]);
    int new_rank = static_cast<int>(std::find(members.begin(), members.end(), rank_) - members.begin());
    return std::make_shared<NcclCommunicator>(make_prefix_store(detail::split_prefix(id, color), store_), new_rank,
                                              static_cast<int>(members.size()), state_->device, options_, world);
  }

  void group_start() override {
    TANDEM_CHECK(t_group.depth == 0 || t_group.state == state_,
                 "nccl group_start: a group of another NCCL communicator is open on this thread (Note [NCCL groups])");
    if (t_group.depth == 0) {
      NCCL_CHECK(ncclGroupStart());
      t_group.state = state_;
    }
    t_group.depth++;
  }

  // The outermost end launches what the group queued and records its events (Note [NCCL groups]).
  void group_end() override {
    TANDEM_CHECK(t_group.depth > 0 && t_group.state == state_,
                 "nccl group_end: no group of this communicator is open on this thread");
    if (--t_group.depth > 0) return;
    OpenGroup group = std::move(t_group);
    t_group = OpenGroup();
    std::lock_guard<std::mutex> lock(issue_mutex_);
    std::lock_guard<std::mutex> enqueue(state_->mutex);
    set_current_device(state_->device);
    if (group.events && !state_->aborted) group.events->record_start(state_->stream);
    ncclResult_t r = ncclGroupEnd();
    state_->grouped = false;
    if (state_->aborted) {  // while the group was open: abort now, and its Works fail as aborted
      state_->abort_locked();
      return;
    }
    bool settled = false;
    try {
      settled = settle(state_->comm, r, "ncclGroupEnd", Clock::now() + options_.timeout);
    } catch (...) {
      state_->abort_locked();  // the group's Works must fail, not wait for a launch that never came
      throw;
    }
    if (!settled) {
      std::string message = state_->tracker->timeout_message(group.first, options_.timeout);
      state_->abort_locked();
      throw CollectiveTimeout(message + fmt::format(" (enqueueing its group of {} calls); the NCCL communicator was "
                                                    "aborted",
                                                    group.calls));
    }
    if (group.events) group.events->record_end(state_->stream);
  }

 private:
  // The one path every call goes through: check, number, enqueue, record the
  // events; inside a group, only queue (Note [NCCL groups]).
  std::shared_ptr<Work> issue(OpDesc op) override {
    bool grouped = t_group.depth > 0;
    TANDEM_CHECK(!grouped || t_group.state == state_,
                 fmt::format("nccl {}: a group of another NCCL communicator is open on this thread and NCCL would "
                             "launch this call with it; end that group first (Note [NCCL groups])",
                             detail::op_name(op.kind)));
    TANDEM_CHECK(grouped || !detail::is_p2p(op.kind) || op.peer != rank_,
                 fmt::format("nccl {}: rank {} can {} {} itself only inside a group (Note [Comm groups])",
                             detail::op_name(op.kind), rank_, detail::op_name(op.kind),
                             op.kind == OpKind::send ? "to" : "from"));
    detail::check_args(op, rank_, size_, "nccl", {.self_p2p = true});
    check_supported(op);
    std::lock_guard<std::mutex> lock(issue_mutex_);
    std::lock_guard<std::mutex> enqueue(state_->mutex);
    TANDEM_CHECK(!state_->aborted, fmt::format("nccl {}: the communicator was aborted after an earlier timeout; "
                                               "create a new one", detail::op_name(op.kind)));
    numbers_.number(op, *state_->tracker);
    set_current_device(state_->device);
    bool calls_nccl = op.kind == OpKind::barrier || op.bytes() > 0;
    std::shared_ptr<OpEvents> events;
    if (grouped) {
      if (!t_group.events) {
        t_group.events = std::make_shared<OpEvents>(state_->device, clock_->anchor());
        t_group.first = op;
      }
      t_group.calls++;
      events = t_group.events;
      if (calls_nccl) {
        state_->grouped = true;
        ncclResult_t r = launch(op);
        if (r != ncclSuccess && r != ncclInProgress)
          throw_library_error("NCCL", r, ncclGetErrorString(r), detail::op_name(op.kind), __FILE__, __LINE__);
      }
    } else {
      events = std::make_shared<OpEvents>(state_->device, clock_->anchor());
      events->record_start(state_->stream);
      if (calls_nccl && !settle(state_->comm, launch(op), detail::op_name(op.kind), Clock::now() + options_.timeout)) {
        std::string message = state_->tracker->timeout_message(op, options_.timeout);
        state_->abort_locked();
        throw CollectiveTimeout(message + " (enqueueing it); the NCCL communicator was aborted");
      }
      events->record_end(state_->stream);
    }
    // The watchdog polls the event itself: a Work may be dropped unwaited (Note [Watchdog]).
    std::weak_ptr<NcclState> weak = state_;
    Watchdog::Id watch = Watchdog::process().begin(op, state_->tracker, options_.timeout, [weak, events] {
      std::shared_ptr<NcclState> state = weak.lock();
      if (!state) return true;  // the communicator is gone: nothing left to watch
      std::lock_guard<std::mutex> lock(state->mutex);
      return !state->aborted && events->recorded() && cudaEventQuery(events->end()) == cudaSuccess;
    });
    return std::make_shared<NcclWork>(state_, op, std::move(events), watch);
  }

  // NCCL cannot group a communicator's creation with operations (Note [NCCL groups]).
  static void check_no_open_group(const char* what) {
    TANDEM_CHECK(t_group.depth == 0, fmt::format("nccl {}: not inside a group (Note [NCCL groups])", what));
  }

  ncclResult_t launch(const OpDesc& op) {
    ncclComm_t comm = state_->comm;
    cudaStream_t s = state_->stream.cuda();
    void* out = op.out.data;
    switch (op.kind) {
      case OpKind::all_reduce:
        return ncclAllReduce(out, out, op.out.count, nccl_type(op.out.dtype), nccl_op(op.reduce), comm, s);
      case OpKind::reduce_scatter:
        return ncclReduceScatter(op.in.data, out, op.out.count, nccl_type(op.out.dtype), nccl_op(op.reduce), comm, s);
      case OpKind::broadcast: return ncclBroadcast(out, out, op.out.bytes(), ncclUint8, op.peer, comm, s);
      case OpKind::all_gather: return ncclAllGather(op.in.data, out, op.in.bytes(), ncclUint8, comm, s);
      case OpKind::barrier:
        return ncclAllReduce(state_->barrier_scratch, state_->barrier_scratch, 1, ncclFloat32, ncclSum, comm, s);
      case OpKind::send: return ncclSend(out, op.out.bytes(), ncclUint8, op.peer, comm, s);
      case OpKind::recv: return ncclRecv(out, op.out.bytes(), ncclUint8, op.peer, comm, s);
    }
    return ncclInvalidArgument;
  }

  void check_supported(const OpDesc& op) const {
    const char* name = detail::op_name(op.kind);
    bool two_buffers = op.kind == OpKind::all_gather || op.kind == OpKind::reduce_scatter;
    if (op.kind != OpKind::barrier)
      for (const Buffer* b : {&op.out, two_buffers ? &op.in : &op.out})
        TANDEM_CHECK(b->device == state_->device,
                     fmt::format("nccl {}: buffers must be on this communicator's device {}, this one is on {}", name,
                                 state_->device.str(), b->device.str()));
    if (detail::is_reduction(op.kind)) nccl_type(op.out.dtype);  // throws for what NCCL cannot reduce
  }

  std::shared_ptr<Store> store_;
  int rank_, size_;
  CommOptions options_;
  std::shared_ptr<NcclState> state_;
  std::unique_ptr<EventClock> clock_;
  std::mutex issue_mutex_;
  int64_t splits_ = 0;
  detail::IssueNumbers numbers_;
};

}  // namespace

std::shared_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Store> store, int rank, int size, Device device,
                                                     const CommOptions& options) {
  if (!device.is_cuda()) throw UserError("the NCCL backend needs a CUDA device, got " + device.str());
  require_cuda("the NCCL backend");
  TANDEM_CHECK(size >= 1 && rank >= 0 && rank < size, fmt::format("nccl: rank {} of a group of {}", rank, size));
  std::vector<int> world(size);
  for (int r = 0; r < size; r++) world[r] = r;
  return std::make_shared<NcclCommunicator>(std::move(store), rank, size, device, options, world);
}


#else  // a build without CUDA

std::shared_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Store>, int, int, Device, const CommOptions&) {
  throw UserError("the NCCL backend needs a CUDA build (configure with -DTANDEM_CUDA=ON); use the gloo backend on CPUs");
}

#endif

Stream comm_stream(Communicator& comm) { return comm.comm_stream(); }

}  // namespace tandem::collectives
