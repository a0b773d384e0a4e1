// The simulated network (Note [Simulated network] in simulated_communicator.h).
#include "runtime/parallel/simulated_communicator.h"

#include <fmt/format.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "collectives/nccl_communicator.h"
#include "kernels/sim_delay.h"
#include "runtime/core/error.h"

#if TANDEM_HAS_CUDA
#include <cuda_runtime.h>

#include "runtime/core/cuda_check.h"
#endif

namespace tandem::parallel {

using collectives::Buffer;
using collectives::CollectiveTimeout;
using collectives::Communicator;
using collectives::Millis;
using collectives::ReduceOp;
using collectives::Work;

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kRank = 0;  // the rank this process plays

const char* op_name(SimulatedOp op) {
  switch (op) {
    case SimulatedOp::all_reduce: return "all_reduce";
    case SimulatedOp::broadcast: return "broadcast";
    case SimulatedOp::all_gather: return "all_gather";
    case SimulatedOp::reduce_scatter: return "reduce_scatter";
    case SimulatedOp::barrier: return "barrier";
    case SimulatedOp::send: return "send";
    case SimulatedOp::recv: return "recv";
  }
  return "?";
}

// One operation as issued: its buffers, its number and how long the link takes.
struct Op {
  SimulatedOp kind = SimulatedOp::barrier;
  Buffer out;  // in place (all_reduce, broadcast, send, recv) or the output
  Buffer in;   // the input of all_gather and reduce_scatter
  ReduceOp reduce = ReduceOp::sum;
  int peer = -1;  // broadcast: the root; send/recv: the other rank
  int64_t seq = 0;
  int64_t ns = 0;  // the link's time for it

  // The whole buffer ring_wire_bytes counts.
  size_t bytes() const {
    if (kind == SimulatedOp::barrier) return 0;
    return kind == SimulatedOp::reduce_scatter ? in.bytes() : out.bytes();
  }
};

std::string describe(const Op& op) {
  return fmt::format("simulated {} #{} ({} bytes)", op_name(op.kind), op.seq, op.bytes());
}

// The data change of Note [Simulated network], on `stream` (the CPU: now).
void apply(const Op& op, int world, const Stream& stream) {
  switch (op.kind) {
    case SimulatedOp::all_reduce:
      if (op.reduce == ReduceOp::sum) kernels::scale(op.out.data, op.out.count, op.out.dtype, world, stream);
      return;
    case SimulatedOp::all_gather: {
      size_t block = op.in.bytes();
      for (int r = 0; r < world; r++)  // the block of our own rank may be the input itself: copy_bytes skips it
        kernels::copy_bytes(static_cast<char*>(op.out.data) + r * block, op.in.data, block, stream);
      return;
    }
    case SimulatedOp::reduce_scatter:
      kernels::copy_bytes(op.out.data, static_cast<const char*>(op.in.data) + kRank * op.out.bytes(),
                          op.out.bytes(), stream);
      if (op.reduce == ReduceOp::sum) kernels::scale(op.out.data, op.out.count, op.out.dtype, world, stream);
      return;
    case SimulatedOp::broadcast:
    case SimulatedOp::barrier:
    case SimulatedOp::send:
    case SimulatedOp::recv: return;
  }
}

std::string timeout_message(const Op& op, Millis timeout, const SimulatedNetwork& net) {
  return fmt::format("{} did not complete within {} ms; the simulated link ({} GB/s, {} us latency) takes {:.3f} ms "
                     "for it, after the operations issued before it",
                     describe(op), timeout.count(), net.gbytes_per_s, net.latency_us, op.ns / 1e6);
}

// ---- The CPU link: a comm thread that runs the operations in issue order.

struct WorkState {
  std::mutex mutex;
  std::condition_variable cv;
  bool done = false;
  std::exception_ptr error;
  Clock::time_point started, ended;  // in the link's schedule, for traces

  // [start, end]: when the link ran the operation; none when it never did.
  void finish(std::exception_ptr e = nullptr, Clock::time_point start = {}, Clock::time_point end = {}) {
    std::lock_guard<std::mutex> lock(mutex);
    done = true;
    error = std::move(e);
    if (start == Clock::time_point()) start = end = Clock::now();
    started = start;
    ended = end;
    cv.notify_all();
  }
};

class CpuWork : public Work {
 public:
  CpuWork(Op op, SimulatedNetwork net) : op_(op), net_(net), state_(std::make_shared<WorkState>()) {}

  void wait(Millis timeout) override {
    std::unique_lock<std::mutex> lock(state_->mutex);
    if (!state_->cv.wait_for(lock, timeout, [&] { return state_->done; }))
      throw CollectiveTimeout(timeout_message(op_, timeout, net_));
    if (state_->error) std::rethrow_exception(state_->error);
  }

  bool completed() override {
    std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->done;
  }

  // The buffers live on the host: nothing to order on a stream.
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
  Op op_;
  SimulatedNetwork net_;
  std::shared_ptr<WorkState> state_;
};

class CpuLink {
 public:
  explicit CpuLink(int world) : world_(world), thread_([this] { loop(); }) {}

  // Fails what has not run, cuts the running operation's wait short, joins.
  ~CpuLink() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      closing_ = true;
      for (Task& t : queue_) t.state->finish(destroyed(t.op, "before it ran"));
      queue_.clear();
      cv_.notify_all();
    }
    thread_.join();
  }

  void enqueue(const Op& op, std::shared_ptr<WorkState> state) {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back({op, std::move(state), Clock::now()});
    cv_.notify_all();
  }

 private:
  struct Task {
    Op op;
    std::shared_ptr<WorkState> state;
    Clock::time_point issued;
  };

  void loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      cv_.wait(lock, [&] { return closing_ || !queue_.empty(); });
      if (closing_) return;
      Task t = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      // The link's schedule, not the thread's wake-ups: an operation starts
      // when it was issued or when the one before it was due, whichever is
      // later, so late wake-ups do not add up over a queue of operations.
      Clock::time_point start = std::max(t.issued, link_free_);
      std::exception_ptr error;
      try {
        if (t.op.bytes() > 0) apply(t.op, world_, Stream());
      } catch (...) {
        error = std::current_exception();
      }
      Clock::time_point due = start + std::chrono::nanoseconds(t.op.ns);
      link_free_ = std::max(due, Clock::now());  // a data change slower than the link delays the next
      lock.lock();
      if (cv_.wait_until(lock, due, [&] { return closing_; })) {
        t.state->finish(destroyed(t.op, "before it completed"));
        return;
      }
      t.state->finish(error, start, link_free_);  // the schedule's times, not the thread's wake-ups
    }
  }

  static std::exception_ptr destroyed(const Op& op, const char* when) {
    return std::make_exception_ptr(Error(describe(op) + ": the communicator was destroyed " + when,
                                         op_name(op.kind), __FILE__, __LINE__));
  }

  int world_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Task> queue_;
  bool closing_ = false;
  Clock::time_point link_free_;  // comm thread only
  std::thread thread_;           // last: starts once the rest is built
};

// ---- The CUDA link: the comm stream.

#if TANDEM_HAS_CUDA

constexpr auto kPollInterval = std::chrono::microseconds(20);

std::shared_ptr<CUevent_st> new_event(Device device) {
  cudaEvent_t raw = nullptr;
  CUDA_CHECK(cudaSetDevice(device.index));
  CUDA_CHECK(cudaEventCreateWithFlags(&raw, cudaEventDisableTiming));
  return std::shared_ptr<CUevent_st>(raw, [](cudaEvent_t e) { cudaEventDestroy(e); });
}

// Note [Comm event times] in collectives/nccl_communicator.h, as NCCL's Works.
class CudaWork : public Work {
 public:
  CudaWork(Op op, SimulatedNetwork net, std::shared_ptr<collectives::OpEvents> events)
      : op_(op), net_(net), events_(std::move(events)) {}

  void wait(Millis timeout) override {
    Clock::time_point deadline = Clock::now() + timeout;
    while (!completed()) {
      if (Clock::now() > deadline) throw CollectiveTimeout(timeout_message(op_, timeout, net_));
      std::this_thread::sleep_for(kPollInterval);
    }
  }

  bool completed() override {
    if (done_) return true;
    cudaError_t status = cudaEventQuery(events_->end());
    if (status == cudaErrorNotReady) return false;
    CUDA_CHECK(status);
    done_ = true;
    return true;
  }

  void wait_stream(const Stream& stream, Millis timeout) override {
    if (stream.device().is_cpu()) return wait(timeout);
    CUDA_CHECK(cudaStreamWaitEvent(stream.cuda(), events_->end(), 0));
  }

  bool run_interval(Clock::time_point* start, Clock::time_point* end) override { return events_->interval(start, end); }

 private:
  Op op_;
  SimulatedNetwork net_;
  std::shared_ptr<collectives::OpEvents> events_;  // the end is the completion
  bool done_ = false;
};

#endif

// ---- The communicator.

class SimulatedCommunicator final : public Communicator {
 public:
  SimulatedCommunicator(int world, Device device, SimulatedNetwork net)
      : world_(world), device_(device), net_(net) {
    if (device.is_cpu()) {
      cpu_link_ = std::make_unique<CpuLink>(world);
    } else {
      stream_ = Stream::create(device);
#if TANDEM_HAS_CUDA
      follow_event_ = new_event(device);
      clock_ = std::make_unique<collectives::EventClock>(device);
#endif
    }
  }

  int rank() const override { return kRank; }
  int size() const override { return world_; }
  const char* backend() const override { return "simulated"; }

  std::shared_ptr<Work> all_reduce(Buffer buf, ReduceOp op) override {
    return issue({.kind = SimulatedOp::all_reduce, .out = buf, .in = {}, .reduce = op});
  }
  std::shared_ptr<Work> broadcast(Buffer buf, int root) override {
    return issue({.kind = SimulatedOp::broadcast, .out = buf, .in = {}, .peer = root});
  }
  std::shared_ptr<Work> all_gather(Buffer out, Buffer in) override {
    return issue({.kind = SimulatedOp::all_gather, .out = out, .in = in});
  }
  std::shared_ptr<Work> reduce_scatter(Buffer out, Buffer in, ReduceOp op) override {
    return issue({.kind = SimulatedOp::reduce_scatter, .out = out, .in = in, .reduce = op});
  }
  std::shared_ptr<Work> barrier() override { return issue({.kind = SimulatedOp::barrier, .out = {}, .in = {}}); }
  std::shared_ptr<Work> send(Buffer buf, int peer) override {
    return issue({.kind = SimulatedOp::send, .out = buf, .in = {}, .peer = peer});
  }
  std::shared_ptr<Work> recv(Buffer buf, int peer) override {
    return issue({.kind = SimulatedOp::recv, .out = buf, .in = {}, .peer = peer});
  }

  // Identical ranks pass identical colors: the sub-group is the whole world,
  // on a link of its own. A negative color joins none (as Gloo and NCCL).
  std::shared_ptr<Communicator> split(int color, int) override {
    if (color < 0) return nullptr;
    return std::make_shared<SimulatedCommunicator>(world_, device_, net_);
  }

  Stream comm_stream() const override { return stream_; }

  void follow(const Stream& producer) {
    std::lock_guard<std::mutex> lock(issue_mutex_);
    TANDEM_CHECK(producer.device().is_cpu() || producer.device() == device_,
                 fmt::format("follow_stream: the producer is on {}, the communicator on {}", producer.device().str(),
                             device_.str()));
    producer_ = producer;
  }

 private:
  // The one path every call goes through: check, number, time, enqueue.
  std::shared_ptr<Work> issue(Op op) {
    check(op);
    op.ns = simulated_duration_ns(net_, op.kind, op.bytes(), world_);
    std::lock_guard<std::mutex> lock(issue_mutex_);
    op.seq = ++issued_;
    if (cpu_link_) {
      auto work = std::make_shared<CpuWork>(op, net_);
      cpu_link_->enqueue(op, work->state());
      return work;
    }
#if TANDEM_HAS_CUDA
    set_current_device(device_);
    cudaStream_t s = stream_.cuda();
    if (producer_.device().is_cuda()) {  // Note [Simulated comm stream]
      CUDA_CHECK(cudaEventRecord(follow_event_.get(), producer_.cuda()));
      CUDA_CHECK(cudaStreamWaitEvent(s, follow_event_.get(), 0));
    }
    auto events = std::make_shared<collectives::OpEvents>(device_, clock_->anchor());
    events->record_start(stream_);  // after the wait for the producer: when the link takes it
    kernels::sim_delay(op.ns, stream_);
    if (op.bytes() > 0) apply(op, world_, stream_);
    events->record_end(stream_);
    return std::make_shared<CudaWork>(op, net_, std::move(events));
#else
    TANDEM_CHECK(false, "simulated communicator on a CUDA device in a build without CUDA");
    return nullptr;
#endif
  }

  void check(const Op& op) const {
    const char* name = op_name(op.kind);
    bool two = op.kind == SimulatedOp::all_gather || op.kind == SimulatedOp::reduce_scatter;
    if (op.kind != SimulatedOp::barrier) {
      for (const Buffer* b : {&op.out, two ? &op.in : &op.out}) {
        TANDEM_CHECK(b->count >= 0, fmt::format("simulated {}: negative element count {}", name, b->count));
        TANDEM_CHECK(b->count == 0 || b->data != nullptr,
                     fmt::format("simulated {}: null buffer with {} elements", name, b->count));
        TANDEM_CHECK(b->device == device_, fmt::format("simulated {}: buffers must be on this communicator's device "
                                                       "{}, this one is on {}",
                                                       name, device_.str(), b->device.str()));
      }
    }
    if (op.kind == SimulatedOp::broadcast)
      TANDEM_CHECK(op.peer >= 0 && op.peer < world_,
                   fmt::format("simulated broadcast: root {} is not a rank of this group of {}", op.peer, world_));
    if (op.kind == SimulatedOp::send || op.kind == SimulatedOp::recv)
      TANDEM_CHECK(op.peer >= 0 && op.peer < world_ && op.peer != kRank,
                   fmt::format("simulated {}: peer {} is not another rank of this group of {} (this is rank {})", name,
                               op.peer, world_, kRank));
    if (two) {
      TANDEM_CHECK(op.in.dtype == op.out.dtype, fmt::format("simulated {}: input is {} but output is {}", name,
                                                            dtype_name(op.in.dtype), dtype_name(op.out.dtype)));
      const Buffer& whole = op.kind == SimulatedOp::all_gather ? op.out : op.in;
      const Buffer& part = op.kind == SimulatedOp::all_gather ? op.in : op.out;
      TANDEM_CHECK(whole.count == part.count * world_,
                   fmt::format("simulated {}: the {} must hold size * {} = {} elements, it holds {}", name,
                               op.kind == SimulatedOp::all_gather ? "output" : "input", part.count,
                               part.count * world_, whole.count));
    }
    if (op.kind == SimulatedOp::all_reduce || op.kind == SimulatedOp::reduce_scatter)
      TANDEM_CHECK(kernels::can_scale(op.out.dtype),
                   fmt::format("simulated {}: cannot reduce {} (f32, bf16 and i32 can)", name, dtype_name(op.out.dtype)));
  }

  int world_;
  Device device_;
  SimulatedNetwork net_;
  std::unique_ptr<CpuLink> cpu_link_;  // on the CPU
  Stream stream_;                      // on CUDA: the comm stream
  std::shared_ptr<CUevent_st> follow_event_;
#if TANDEM_HAS_CUDA
  std::unique_ptr<collectives::EventClock> clock_;  // Note [Comm event times]
#endif
  Stream producer_;                    // Note [Simulated comm stream]
  std::mutex issue_mutex_;             // numbering and queueing happen together
  int64_t issued_ = 0;
};

}  // namespace

double ring_wire_bytes(SimulatedOp op, size_t bytes, int world_size) {
  double b = static_cast<double>(bytes), n = world_size;
  switch (op) {
    case SimulatedOp::all_reduce: return 2.0 * (n - 1) / n * b;
    case SimulatedOp::all_gather:
    case SimulatedOp::reduce_scatter: return (n - 1) / n * b;
    case SimulatedOp::broadcast: return world_size > 1 ? b : 0.0;
    case SimulatedOp::send:
    case SimulatedOp::recv: return b;
    case SimulatedOp::barrier: return 0.0;
  }
  return 0.0;
}

int64_t simulated_duration_ns(const SimulatedNetwork& network, SimulatedOp op, size_t bytes, int world_size) {
  if (bytes == 0 && op != SimulatedOp::barrier) return 0;
  double ns = network.latency_us * 1e3 + ring_wire_bytes(op, bytes, world_size) / network.gbytes_per_s;
  return static_cast<int64_t>(ns + 0.5);  // bytes / (GB/s) is nanoseconds
}

std::shared_ptr<Communicator> make_simulated_communicator(int world_size, Device device, SimulatedNetwork network) {
  if (world_size < 1) throw UserError(fmt::format("a simulated world needs at least 1 rank, got {}", world_size));
  if (!(network.gbytes_per_s > 0))
    throw UserError(fmt::format("a simulated network needs a positive bandwidth, got {} GB/s", network.gbytes_per_s));
  if (!(network.latency_us >= 0))
    throw UserError(fmt::format("a simulated network needs a latency >= 0, got {} us", network.latency_us));
  if (device.is_cuda()) require_cuda("a simulated network on a CUDA device");
  return std::make_shared<SimulatedCommunicator>(world_size, device, network);
}

bool is_simulated(const Communicator& comm) { return dynamic_cast<const SimulatedCommunicator*>(&comm) != nullptr; }

Stream simulated_comm_stream(Communicator& comm) { return comm.comm_stream(); }

void follow_stream(Communicator& comm, const Stream& producer) {
  if (auto* sim = dynamic_cast<SimulatedCommunicator*>(&comm)) sim->follow(producer);
}

}  // namespace tandem::parallel
