// The Gloo backend: collectives over CPU buffers between ranks connected by
// Gloo's TCP transport.
//
// Note [Gloo comm thread]
// Each public call builds one OpDesc, checks it, numbers it and queues it; a
// single comm thread per communicator runs the queue in issue order, so a
// call returns at once and the transfer overlaps the caller's compute. Every
// rank issues the same collectives in the same order, and a collective's
// Gloo tag is its seq, so a rank that skipped one fails to match (a timeout
// that names it) instead of mixing two collectives' data.
// send/recv are only *posted* on the comm thread (Gloo's transport thread
// moves the data); a second thread waits for them in posting order. Waiting
// for a send on the comm thread would deadlock the common ring where every
// rank sends first, as a blocking MPI_Ssend does.
//
// Note [Gloo failures]
// Gloo's own timeout (the context's, CommOptions::timeout) releases the comm
// thread from a collective that a peer never joins. That failure fails the
// Work and poisons the communicator: later operations fail at once with the
// first error, because a late peer may still send data for the abandoned
// collective. A Work::wait that runs out throws CollectiveTimeout but
// poisons nothing: the operation may still complete.
//
// Note [Gloo shutdown]
// The destructor fails queued operations that have not started, aborts the
// wait for a posted send/recv, and gives a running collective up to
// kShutdownGrace. Then it detaches the threads rather than hang: they own the
// engine (Gloo context, connections), which dies with the last of them once
// Gloo's timeout has released them. Buffers of unfinished operations must
// outlive that, as with any unfinished Work.
#include <fmt/format.h>
#include <gloo/common/error.h>
#include <gloo/rendezvous/context.h>
#include <gloo/transport/tcp/device.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include "collectives/comm_common.h"
#include "collectives/communicator.h"
#include "collectives/gloo_ops.h"
#include "collectives/gloo_store.h"
#include "collectives/watchdog.h"

namespace tandem::collectives {

namespace {

using detail::OpDesc;
using detail::OpKind;
using Clock = std::chrono::steady_clock;

constexpr Millis kShutdownGrace{1000};  // Note [Gloo shutdown]

struct WorkState {
  std::mutex mutex;
  std::condition_variable cv;
  bool done = false;
  std::exception_ptr error;
  Clock::time_point started, ended;  // on the comm thread, for traces
  std::atomic<Watchdog::Id> watch{0};  // Note [Watchdog] in watchdog.h

  void finish(std::exception_ptr e = nullptr) {
    Watchdog::process().end(watch.load());
    std::lock_guard<std::mutex> lock(mutex);
    done = true;
    error = std::move(e);
    ended = Clock::now();
    if (started == Clock::time_point()) started = ended;
    cv.notify_all();
  }
};

class GlooWork : public Work {
 public:
  GlooWork(OpDesc op, std::shared_ptr<detail::GroupTracker> tracker)
      : op_(op), tracker_(std::move(tracker)), state_(std::make_shared<WorkState>()) {}

  void wait(Millis timeout) override {
    std::unique_lock<std::mutex> lock(state_->mutex);
    if (!state_->cv.wait_for(lock, timeout, [&] { return state_->done; })) {
      lock.unlock();  // reading the store may take a moment; never under the lock
      Watchdog::process().expired(state_->watch.load());
      throw CollectiveTimeout(tracker_->timeout_message(op_, timeout));
    }
    if (state_->error) std::rethrow_exception(state_->error);
  }

  bool completed() override {
    std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->done;
  }

  // Gloo buffers live on the host: nothing to order on a stream, so waiting is all there is.
  void wait_stream(const Stream&, Millis timeout) override { wait(timeout); }

  bool run_interval(Clock::time_point* start, Clock::time_point* end) override {
    std::lock_guard<std::mutex> lock(state_->mutex);
    if (!state_->done) return false;
    *start = state_->started;
    *end = state_->ended;
    return true;
  }

  const std::shared_ptr<WorkState>& state() const { return state_; }

 private:
  OpDesc op_;
  std::shared_ptr<detail::GroupTracker> tracker_;
  std::shared_ptr<WorkState> state_;
};

// The state the comm threads own together with the communicator (Note [Gloo shutdown]).
class Engine {
 public:
  Engine(std::shared_ptr<gloo::Context> context, std::shared_ptr<detail::GroupTracker> tracker, Millis timeout)
      : ops_(std::move(context), timeout), tracker_(std::move(tracker)), timeout_(timeout) {}

  void enqueue(const OpDesc& op, std::shared_ptr<WorkState> state) {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back({op, std::move(state), nullptr});
    cv_.notify_all();
  }

  void close() {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_ = true;
    for (Task& t : queue_) t.state->finish(failure(t.op, "the communicator was destroyed before it ran"));
    for (Task& t : posted_) t.state->finish(failure(t.op, "the communicator was destroyed before it completed"));
    queue_.clear();
    posted_.clear();
    if (waiting_) (waiting_->op.kind == OpKind::send ? waiting_->buf->abortWaitSend() : waiting_->buf->abortWaitRecv());
    cv_.notify_all();
  }

  // Whether both threads ended within `grace`.
  bool wait_threads(Millis grace) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, grace, [&] { return live_threads_ == 0; });
  }

  void comm_loop() { loop(queue_, [&](Task& t) { run(t); }); }
  void p2p_loop() { loop(posted_, [&](Task& t) { complete(t); }); }

 private:
  struct Task {
    OpDesc op;
    std::shared_ptr<WorkState> state;
    std::unique_ptr<gloo::transport::UnboundBuffer> buf;  // posted send/recv
  };

  template <typename F>
  void loop(std::deque<Task>& tasks, F body) {
    for (;;) {
      Task t;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return closing_ || !tasks.empty(); });
        if (tasks.empty()) break;
        t = std::move(tasks.front());
        tasks.pop_front();
      }
      body(t);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    live_threads_--;
    cv_.notify_all();
  }

  // One queued operation, on the comm thread.
  void run(Task& t) {
    if (std::exception_ptr e = poisoned(t.op)) return t.state->finish(e);
    if (t.op.kind != OpKind::barrier && t.op.bytes() == 0) return t.state->finish();  // still in issue order
    Clock::time_point start = Clock::now();
    {
      std::lock_guard<std::mutex> lock(t.state->mutex);
      t.state->started = start;
    }
    try {
      if (detail::is_p2p(t.op.kind)) return post(t);
      ops_.run(t.op);
      t.state->finish();
    } catch (const std::exception& e) {
      fail(t, e, Clock::now() - start);
    }
  }

  // One posted send/recv, on the p2p thread: wait until the transport moved it.
  void complete(Task& t) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (closing_) return t.state->finish(failure(t.op, "the communicator was destroyed before it completed"));
      waiting_ = &t;  // close() aborts this wait
    }
    Clock::time_point start = Clock::now();
    try {
      bool done = t.op.kind == OpKind::send ? t.buf->waitSend(timeout_) : t.buf->waitRecv(timeout_);
      if (done) t.state->finish();
      else t.state->finish(failure(t.op, "the communicator was destroyed before it completed"));
    } catch (const std::exception& e) {
      fail(t, e, Clock::now() - start);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    waiting_ = nullptr;
  }

  // Posts a send/recv and hands it to the p2p thread (Note [Gloo comm thread]).
  void post(Task& t) {
    t.buf = ops_.post(t.op);
    std::lock_guard<std::mutex> lock(mutex_);
    posted_.push_back(std::move(t));
    cv_.notify_all();
  }

  // Note [Gloo failures]: a timeout becomes a CollectiveTimeout that names the
  // ranks behind; a closed or reset connection a PeerLost; anything else a
  // LibraryError. Each poisons the communicator.
  void fail(Task& t, const std::exception& e, Clock::duration took) {
    std::exception_ptr error;
    bool timed_out = took >= timeout_ || std::string(e.what()).find("imed out") != std::string::npos;
    if (dynamic_cast<const Error*>(&e)) {
      error = std::current_exception();
    } else if (timed_out) {
      Watchdog::process().expired(t.state->watch.load());  // reports now: Note [Watchdog]
      error = std::make_exception_ptr(
          CollectiveTimeout(tracker_->timeout_message(t.op, timeout_) + fmt::format(" (gloo: {})", e.what())));
    } else {
      // Likely a peer that gave up on this operation and closed its
      // connections: reported as stuck if it is old enough (Note [Watchdog]).
      Watchdog::process().gave_up(t.state->watch.load(), e.what());
      if (dynamic_cast<const gloo::IoException*>(&e))
        error = std::make_exception_ptr(PeerLost(fmt::format(
            "{} failed: a peer closed or reset its connection (its process died, or its host is unreachable): {}",
            detail::describe(t.op), e.what())));
      else
        error = std::make_exception_ptr(LibraryError("Gloo", 0, detail::describe(t.op) + " failed: " + e.what(),
                                                     detail::op_name(t.op.kind), __FILE__, __LINE__));
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!poison_) poison_ = detail::describe(t.op) + " failed: " + e.what();
    }
    t.state->finish(error);
  }

  std::exception_ptr poisoned(const OpDesc& op) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!poison_) return nullptr;
    return failure(op, "not run: this communicator failed earlier (" + *poison_ + "); create a new one");
  }

  std::exception_ptr failure(const OpDesc& op, const std::string& why) const {
    return std::make_exception_ptr(
        Error("gloo " + detail::describe(op) + ": " + why, detail::op_name(op.kind), __FILE__, __LINE__));
  }

  detail::GlooOps ops_;  // comm thread only
  std::shared_ptr<detail::GroupTracker> tracker_;
  Millis timeout_;

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Task> queue_;   // issued, not yet run (comm thread)
  std::deque<Task> posted_;  // send/recv posted, not yet waited for (p2p thread)
  Task* waiting_ = nullptr;  // the send/recv the p2p thread waits for
  bool closing_ = false;
  int live_threads_ = 2;
  std::optional<std::string> poison_;  // Note [Gloo failures]
};

class GlooCommunicator final : public detail::DescriptorCommunicator {
 public:
  GlooCommunicator(std::shared_ptr<Store> store, int rank, int size, const CommOptions& options,
                   std::shared_ptr<gloo::transport::Device> device, std::vector<int> world_ranks)
      : store_(std::move(store)), rank_(rank), size_(size), options_(options), device_(std::move(device)),
        numbers_(size) {
    tracker_ = std::make_shared<detail::GroupTracker>(store_, rank, size, "gloo", std::move(world_ranks));
    detail::await_all_ranks(*store_, rank, size, "gloo rendezvous", options.timeout);
    auto context = std::make_shared<gloo::rendezvous::Context>(rank, size);
    context->setTimeout(options.timeout);
    try {
      context->connectFullMesh(*make_gloo_store(make_prefix_store("gloo", store_), options.timeout), device_);
    } catch (const gloo::Exception& e) {
      throw LibraryError("Gloo", 0, e.what(), "gloo::rendezvous::Context::connectFullMesh", __FILE__, __LINE__);
    }
    engine_ = std::make_shared<Engine>(std::move(context), tracker_, options.timeout);
    comm_thread_ = std::thread([engine = engine_] { engine->comm_loop(); });
    p2p_thread_ = std::thread([engine = engine_] { engine->p2p_loop(); });
  }

  ~GlooCommunicator() override {
    engine_->close();
    bool ended = engine_->wait_threads(kShutdownGrace);
    for (std::thread* t : {&comm_thread_, &p2p_thread_}) ended ? t->join() : t->detach();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend() const override { return "gloo"; }

  // A negative color joins no sub-group and returns nullptr (as MPI_UNDEFINED
  // and NCCL_SPLIT_NOCOLOR do). Sub-groups share this communicator's TCP device.
  std::shared_ptr<Communicator> split(int color, int key) override {
    int64_t id;
    {
      std::lock_guard<std::mutex> lock(issue_mutex_);
      id = ++splits_;  // every rank splits in the same order, so ids agree
    }
    std::vector<int> members = detail::split_members(*store_, rank_, size_, id, color, key, options_.timeout);
    if (color < 0) return nullptr;
    std::vector<int> world;
    for (int m : members) world.push_back(tracker_->world_ranks()[m]);
    int new_rank = static_cast<int>(std::find(members.begin(), members.end(), rank_) - members.begin());
    return std::make_shared<GlooCommunicator>(make_prefix_store(detail::split_prefix(id, color), store_), new_rank,
                                              static_cast<int>(members.size()), options_, device_, world);
  }

 private:
  // The one path every call goes through (Note [Gloo comm thread]).
  std::shared_ptr<Work> issue(OpDesc op) override {
    detail::check_args(op, rank_, size_, "gloo");
    check_supported(op);
    std::lock_guard<std::mutex> lock(issue_mutex_);
    numbers_.number(op, *tracker_);
    auto work = std::make_shared<GlooWork>(op, tracker_);
    work->state()->watch = Watchdog::process().begin(op, tracker_, options_.timeout);
    engine_->enqueue(op, work->state());
    return work;
  }

  static void check_supported(const OpDesc& op) {
    const char* name = detail::op_name(op.kind);
    bool two_buffers = op.kind == OpKind::all_gather || op.kind == OpKind::reduce_scatter;
    for (const Buffer* b : {&op.out, two_buffers ? &op.in : &op.out})
      TANDEM_CHECK(b->device.is_cpu(), fmt::format("gloo {}: buffers must be on the CPU, this one is on {}; use the "
                                                   "NCCL backend for CUDA buffers",
                                                   name, b->device.str()));
    if (detail::is_reduction(op.kind))
      TANDEM_CHECK(op.out.dtype == DType::f32 || op.out.dtype == DType::bf16 || op.out.dtype == DType::f16 ||
                       op.out.dtype == DType::i32,
                   fmt::format("gloo {}: cannot reduce {} (f32, bf16, f16 and i32 can)", name,
                               dtype_name(op.out.dtype)));
  }

  std::shared_ptr<Store> store_;
  int rank_, size_;
  CommOptions options_;
  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<detail::GroupTracker> tracker_;
  std::shared_ptr<Engine> engine_;
  std::thread comm_thread_, p2p_thread_;

  std::mutex issue_mutex_;  // numbering and queueing happen together, so the queue is in seq order
  int64_t splits_ = 0;
  detail::IssueNumbers numbers_;
};

}  // namespace

std::shared_ptr<Communicator> make_gloo_communicator(std::shared_ptr<Store> store, int rank, int size,
                                                     const CommOptions& options) {
  TANDEM_CHECK(size >= 1 && rank >= 0 && rank < size, fmt::format("gloo: rank {} of a group of {}", rank, size));
  gloo::transport::tcp::attr attr;
  attr.hostname = options.host;
  std::shared_ptr<gloo::transport::Device> device;
  try {
    device = gloo::transport::tcp::CreateDevice(attr);
  } catch (const std::exception& e) {
    throw LibraryError("Gloo", 0, fmt::format("cannot open a TCP device on '{}': {}", options.host, e.what()),
                       "gloo::transport::tcp::CreateDevice", __FILE__, __LINE__);
  }
  std::vector<int> world(size);
  for (int r = 0; r < size; r++) world[r] = r;
  return std::make_shared<GlooCommunicator>(std::move(store), rank, size, options, std::move(device), world);
}

}  // namespace tandem::collectives
