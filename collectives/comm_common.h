// What the Gloo and NCCL backends share: the descriptor each public call
// builds, the argument checks, the sequence records that let a timeout name
// the ranks that are behind, the arrival check at setup and the membership
// of split(). Internal to collectives/; not part of the public API.
//
// Note [Naming the missing ranks]
// Every rank numbers the collectives it issues in a group 1, 2, 3, ... and,
// when it issues one, writes that number to the group's store under
// "seq/<rank>" (one small set per call). A rank whose wait runs out reads
// every rank's record and names those whose last issued number is below the
// one it waits for: they have not called the collective yet (a rank that
// never called any has no record and counts as 0). When no rank is behind,
// the message says so: someone is stuck inside an earlier operation, or the
// timeout is too short for the transfer. Point-to-point operations are
// numbered per (sender, receiver) pair instead, and a timeout names the peer.
// The record also carries the op and its size ("12 all_reduce 4000"), so a
// rank that issued #12 as another collective is named as a mismatch
// ("rank 1 issued #12 as broadcast (8 bytes)") rather than as caught up.
// A running Watchdog (watchdog.h) also bumps "alive/<rank>" every check; a
// rank whose counter stops moving while an operation is overdue is named as
// showing no sign of life (stopped, or its process hung), the one case the
// seq records cannot tell apart from a slow transfer.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "collectives/communicator.h"

namespace tandem::collectives::detail {

enum class OpKind : uint8_t { all_reduce, broadcast, all_gather, reduce_scatter, barrier, send, recv };
const char* op_name(OpKind kind);  // "all_reduce", ...
inline bool is_p2p(OpKind kind) { return kind == OpKind::send || kind == OpKind::recv; }
inline bool is_reduction(OpKind kind) { return kind == OpKind::all_reduce || kind == OpKind::reduce_scatter; }

// One operation, as every public call describes it before it goes through
// the one checking path and into the backend.
struct OpDesc {
  OpKind kind = OpKind::barrier;
  Buffer out;  // the in-place buffer (all_reduce, broadcast, send, recv) or the output
  Buffer in;   // the input of all_gather and reduce_scatter; otherwise unused
  ReduceOp reduce = ReduceOp::sum;
  int peer = -1;    // broadcast: the root; send/recv: the other rank
  int64_t seq = 0;  // collectives: issue number in the group; p2p: number within the (sender, receiver) pair

  // Bytes this rank contributes: what a timeout message reports.
  size_t bytes() const { return kind == OpKind::all_gather || kind == OpKind::reduce_scatter ? in.bytes() : out.bytes(); }
};

// "all_reduce #3 (4000 bytes)", "send #1 to rank 2 (400 bytes)": how errors name an operation.
std::string describe(const OpDesc& op);

// What a backend allows beyond the rules every backend shares.
struct ArgRules {
  bool self_p2p = false;  // send/recv with this rank itself (NCCL inside a group: Note [Comm groups])
};

// Argument checks every backend shares (TANDEM_CHECK, naming the op):
// non-negative counts, non-null data, the root or peer in range (and not
// this rank, unless `rules` allow it), all_gather and reduce_scatter sizes
// and dtypes. Device and dtype support are the backend's own checks.
void check_args(const OpDesc& op, int rank, int size, const char* backend, ArgRules rules = {});

// The seq records of one group (Note [Naming the missing ranks]).
class GroupTracker {
 public:
  // `world_ranks[r]` is group rank r's rank in the world the group was split
  // from (the identity for a world group), so messages name both.
  GroupTracker(std::shared_ptr<Store> store, int rank, int size, std::string backend, std::vector<int> world_ranks);

  // Records that this rank issued collective `op` (its seq, op and size).
  // Best effort: the record only feeds error messages, so a failing store
  // does not fail the call.
  void record_issue(const OpDesc& op) const;
  // (rank, last issued seq) of every other rank whose last issued collective is below `seq`.
  std::vector<std::pair<int, int64_t>> behind(int64_t seq) const;
  // The CollectiveTimeout message for `op` after `waited`.
  std::string timeout_message(const OpDesc& op, Millis waited) const;
  // The watchdog's message for `op`, in flight for `age`: `progress` is what
  // progress(op) read (or why it could not), `silent` the group ranks whose
  // heartbeat did not move for `silent_for`.
  std::string stuck_message(const OpDesc& op, Millis age, const std::string& progress, const std::vector<int>& silent,
                            Millis silent_for) const;
  // Who is behind `op`, or issued its seq as another collective (store
  // reads): the tail of both messages.
  std::string progress(const OpDesc& op) const;

  // Liveness (Note [Naming the missing ranks]), for the watchdog; best effort.
  void heartbeat() const;
  // Every rank's heartbeat count; -1 where it has none (no watchdog runs there).
  std::vector<int64_t> heartbeats() const;
  int rank() const { return rank_; }
  // "rank 3" or "rank 1 (world rank 3)".
  std::string rank_name(int group_rank) const;

  const std::shared_ptr<Store>& store() const { return store_; }
  const std::vector<int>& world_ranks() const { return world_ranks_; }

 private:
  std::shared_ptr<Store> store_;
  int rank_, size_;
  std::string backend_;
  std::vector<int> world_ranks_;
};

// Numbers operations as Note [Naming the missing ranks] says: collectives
// 1, 2, 3, ... in the group (recording each issue in the tracker), sends and
// receives per peer. Not thread-safe: backends call it under their issue lock.
class IssueNumbers {
 public:
  explicit IssueNumbers(int size) : sent_(size), received_(size) {}
  void number(OpDesc& op, const GroupTracker& tracker) {
    if (op.kind == OpKind::send) {
      op.seq = ++sent_[op.peer];
    } else if (op.kind == OpKind::recv) {
      op.seq = ++received_[op.peer];
    } else {
      op.seq = ++collectives_;
      tracker.record_issue(op);
    }
  }

 private:
  int64_t collectives_ = 0;
  std::vector<int64_t> sent_, received_;  // per peer
};

// Both backends' public calls: each builds one OpDesc and hands it to the
// backend's issue(), the one path every operation goes through.
class DescriptorCommunicator : public Communicator {
 public:
  std::shared_ptr<Work> all_reduce(Buffer buf, ReduceOp op) override {
    return issue({.kind = OpKind::all_reduce, .out = buf, .in = {}, .reduce = op});
  }
  std::shared_ptr<Work> broadcast(Buffer buf, int root) override {
    return issue({.kind = OpKind::broadcast, .out = buf, .in = {}, .peer = root});
  }
  std::shared_ptr<Work> all_gather(Buffer out, Buffer in) override {
    return issue({.kind = OpKind::all_gather, .out = out, .in = in});
  }
  std::shared_ptr<Work> reduce_scatter(Buffer out, Buffer in, ReduceOp op) override {
    return issue({.kind = OpKind::reduce_scatter, .out = out, .in = in, .reduce = op});
  }
  std::shared_ptr<Work> barrier() override { return issue({.kind = OpKind::barrier, .out = {}, .in = {}}); }
  std::shared_ptr<Work> send(Buffer buf, int peer) override {
    return issue({.kind = OpKind::send, .out = buf, .in = {}, .peer = peer});
  }
  std::shared_ptr<Work> recv(Buffer buf, int peer) override {
    return issue({.kind = OpKind::recv, .out = buf, .in = {}, .peer = peer});
  }

 protected:
  virtual std::shared_ptr<Work> issue(OpDesc op) = 0;
};

// Publishes "arrived/<rank>" and waits for every rank of the group; throws
// CollectiveTimeout naming the ranks that did not arrive within `timeout`.
void await_all_ranks(Store& store, int rank, int size, const std::string& what, Millis timeout);

// split(): publishes this rank's (color, key) as split number `split_id`,
// gathers everyone's, and returns the group ranks of `color` ordered by
// (key, rank). Throws CollectiveTimeout naming the ranks that did not call it.
std::vector<int> split_members(Store& store, int rank, int size, int64_t split_id, int color, int key,
                               Millis timeout);

// The store prefix of split number `split_id`'s sub-group of `color`.
std::string split_prefix(int64_t split_id, int color);

}  // namespace tandem::collectives::detail
