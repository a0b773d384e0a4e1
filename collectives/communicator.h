// The Communicator: collectives over a group of ranks. Every call is
// asynchronous: it enqueues the operation and returns a Work; waiting is
// explicit. Buffers are typed spans (pointer, element count, dtype,
// device), never a void* and a byte count.
//
// Backends: Gloo (CPU buffers; a comm thread runs the operations in issue
// order, so they overlap the caller's compute) and NCCL (CUDA buffers; its
// own comm stream; the id is exchanged through the Store; groups of calls).
//
// Note [Comm groups]
// Operations issued between group_start() and group_end() on one thread are
// launched together at group_end(), as one NCCL launch (ncclGroupStart/End):
// their Works complete when the group does (each reports the group's run
// interval), and none may be waited on before group_end() (NCCL refuses it:
// the operation is not on the stream yet). Sends and receives of a group
// progress together, so their order does not matter, and NCCL lets a rank
// send to itself there. Groups nest; only the outermost group_end()
// launches. Every rank must group the same operations, in the same order
// (NCCL fuses a group into one launch, whose shape the ranks must agree on).
// Gloo and the simulated network run operations on a comm thread in issue
// order and post sends and receives without blocking: they have nothing to
// fuse, and both calls do nothing there. Prefer the scoped CommGroup to the
// two calls.
#pragma once

#include <chrono>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "collectives/store.h"
#include "runtime/core/stream.h"
#include "runtime/core/tensor.h"

namespace tandem::collectives {

enum class ReduceOp { sum, avg, max };
const char* reduce_op_name(ReduceOp op);

struct Buffer {
  void* data = nullptr;
  int64_t count = 0;  // elements
  DType dtype = DType::f32;
  Device device = Device::cpu();

  static Buffer of(const Tensor& t) { return {t.data(), t.numel(), t.dtype(), t.device()}; }
  size_t bytes() const { return static_cast<size_t>(count) * dtype_size(dtype); }
};

// A collective that failed for a cause outside this process (a peer, the
// network): not a bug here. The message names the collective.
class CollectiveError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A collective that did not complete in time. The message names the
// collective, its sequence number in the group, its size in bytes and the
// ranks that had not issued it.
class CollectiveTimeout : public CollectiveError {
 public:
  using CollectiveError::CollectiveError;
};

// A collective that failed because a peer closed or reset its connection:
// its process died, or its host became unreachable; the launcher names the
// peer that failed.
class PeerLost : public CollectiveError {
 public:
  using CollectiveError::CollectiveError;
};

class Work {
 public:
  virtual ~Work() = default;
  // Blocks until the operation completed (for NCCL: until the comm stream
  // reached it). Throws CollectiveTimeout after `timeout`, or the backend's
  // error; never hangs.
  virtual void wait(Millis timeout) = 0;
  virtual bool completed() = 0;
  // Makes `stream` wait for the operation without blocking the host (NCCL:
  // an event; Gloo: the same as wait()).
  virtual void wait_stream(const Stream& stream, Millis timeout) = 0;
  // For traces: the steady-clock times the operation started and finished
  // running, once it completed; false before, or when the backend does not
  // know them. Gloo's and the simulated network's comm threads take them;
  // NCCL and the simulated CUDA network read events recorded around the
  // operation on the comm stream (Note [Comm event times] in
  // nccl_communicator.h), so asking costs no synchronization.
  virtual bool run_interval(std::chrono::steady_clock::time_point* start, std::chrono::steady_clock::time_point* end) {
    (void)start;
    (void)end;
    return false;
  }
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const char* backend() const = 0;  // "gloo", "nccl"
  // The stream operations run on (Note [NCCL comm stream]): NCCL's and a
  // simulated GPU network's own stream; the CPU stream for host backends.
  virtual Stream comm_stream() const { return Stream(); }

  // In place: every rank's `buf` ends holding the reduction of all of them.
  virtual std::shared_ptr<Work> all_reduce(Buffer buf, ReduceOp op) = 0;
  virtual std::shared_ptr<Work> broadcast(Buffer buf, int root) = 0;
  // out holds size() * in.count elements, rank r's input at r * in.count.
  virtual std::shared_ptr<Work> all_gather(Buffer out, Buffer in) = 0;
  // in holds size() * out.count elements; rank r gets the reduction of
  // every rank's block r.
  virtual std::shared_ptr<Work> reduce_scatter(Buffer out, Buffer in, ReduceOp op) = 0;
  virtual std::shared_ptr<Work> barrier() = 0;
  virtual std::shared_ptr<Work> send(Buffer buf, int peer) = 0;
  virtual std::shared_ptr<Work> recv(Buffer buf, int peer) = 0;

  // Sub-groups: ranks that pass the same `color` form a new communicator,
  // ordered by (key, rank). Every rank of this group must call split.
  virtual std::shared_ptr<Communicator> split(int color, int key) = 0;

  // Note [Comm groups]. The default suits backends with nothing to fuse.
  virtual void group_start() {}
  virtual void group_end() {}
};

// A group for the scope (Note [Comm groups]):
//     {
//       CommGroup group(comm);
//       sent = comm.send(Buffer::of(a), peer);
//       got = comm.recv(Buffer::of(b), peer);
//     }  // launched here
//     got->wait(timeout);
// A scope left by an exception still ends the group (NCCL's group is the
// thread's: left open, it would swallow every later call); an error in
// ending it then is logged, and the exception in flight goes on.
class CommGroup {
 public:
  explicit CommGroup(Communicator& comm) : comm_(comm), exceptions_(std::uncaught_exceptions()) {
    comm_.group_start();
  }
  ~CommGroup() noexcept(false);  // throws what group_end() throws, unless unwinding
  CommGroup(const CommGroup&) = delete;
  CommGroup& operator=(const CommGroup&) = delete;

 private:
  Communicator& comm_;
  int exceptions_;  // in flight when the group started
};

struct CommOptions {
  Millis timeout{std::chrono::seconds(300)};  // per collective
  std::string host = "127.0.0.1";             // this rank's address for Gloo's TCP pairs
};

// Ranks rendezvous through `store` (each group under its own prefix).
std::shared_ptr<Communicator> make_gloo_communicator(std::shared_ptr<Store> store, int rank, int size,
                                                     const CommOptions& options);
// Throws UserError in a build without CUDA.
std::shared_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Store> store, int rank, int size,
                                                     Device device, const CommOptions& options);

}  // namespace tandem::collectives
