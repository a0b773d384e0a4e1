// Shared pieces of the Gloo and NCCL backends (see comm_common.h).
#include "collectives/comm_common.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <tuple>

#include "runtime/core/log.h"

namespace tandem::collectives::detail {

namespace {

// Reading a record that check() just found: it exists, so this only bounds a slow store.
constexpr Millis kRecordReadTimeout{1000};

std::string join_ranks(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// Group ranks whose key `prefix<rank>` is absent from the store.
std::vector<int> ranks_without(Store& store, const std::string& prefix, int size) {
  std::vector<int> missing;
  for (int r = 0; r < size; r++)
    if (!store.check({prefix + std::to_string(r)})) missing.push_back(r);
  return missing;
}

std::string rank_list(const std::vector<int>& ranks) {
  std::vector<std::string> names;
  for (int r : ranks) names.push_back(std::to_string(r));
  return join_ranks(names);
}

}  // namespace

const char* op_name(OpKind kind) {
  switch (kind) {
    case OpKind::all_reduce: return "all_reduce";
    case OpKind::broadcast: return "broadcast";
    case OpKind::all_gather: return "all_gather";
    case OpKind::reduce_scatter: return "reduce_scatter";
    case OpKind::barrier: return "barrier";
    case OpKind::send: return "send";
    case OpKind::recv: return "recv";
  }
  return "?";
}

std::string describe(const OpDesc& op) {
  if (op.kind == OpKind::send || op.kind == OpKind::recv)
    return fmt::format("{} #{} {} rank {} ({} bytes)", op_name(op.kind), op.seq, op.kind == OpKind::send ? "to" : "from",
                       op.peer, op.bytes());
  return fmt::format("{} #{} ({} bytes)", op_name(op.kind), op.seq, op.bytes());
}

void check_args(const OpDesc& op, int rank, int size, const char* backend, ArgRules rules) {
  const char* name = op_name(op.kind);
  for (const Buffer* b : {&op.out, &op.in}) {
    TANDEM_CHECK(b->count >= 0, fmt::format("{} {}: negative element count {}", backend, name, b->count));
    TANDEM_CHECK(b->count == 0 || b->data != nullptr,
                 fmt::format("{} {}: null buffer with {} elements", backend, name, b->count));
  }
  if (op.kind == OpKind::broadcast)
    TANDEM_CHECK(op.peer >= 0 && op.peer < size,
                 fmt::format("{} broadcast: root {} is not a rank of this group of {}", backend, op.peer, size));
  if (is_p2p(op.kind)) {
    TANDEM_CHECK(op.peer >= 0 && op.peer < size,
                 fmt::format("{} {}: peer {} is not a rank of this group of {}", backend, name, op.peer, size));
    TANDEM_CHECK(rules.self_p2p || op.peer != rank, fmt::format("{} {}: rank {} cannot {} {} itself", backend, name,
                                                                rank, name, op.kind == OpKind::send ? "to" : "from"));
  }
  if (op.kind == OpKind::all_gather || op.kind == OpKind::reduce_scatter) {
    TANDEM_CHECK(op.in.dtype == op.out.dtype, fmt::format("{} {}: input is {} but output is {}", backend, name,
                                                          dtype_name(op.in.dtype), dtype_name(op.out.dtype)));
    const Buffer& whole = op.kind == OpKind::all_gather ? op.out : op.in;
    const Buffer& part = op.kind == OpKind::all_gather ? op.in : op.out;
    TANDEM_CHECK(whole.count == part.count * size,
                 fmt::format("{} {}: the {} must hold size * {} = {} elements, it holds {}", backend, name,
                             op.kind == OpKind::all_gather ? "output" : "input", part.count, part.count * size,
                             whole.count));
  }
}

GroupTracker::GroupTracker(std::shared_ptr<Store> store, int rank, int size, std::string backend,
                           std::vector<int> world_ranks)
    : store_(std::move(store)), rank_(rank), size_(size), backend_(std::move(backend)),
      world_ranks_(std::move(world_ranks)) {
  TANDEM_CHECK(static_cast<int>(world_ranks_.size()) == size_, "world_ranks must name every rank of the group");
}

void GroupTracker::record_issue(const OpDesc& op) const {
  try {
    store_->set("seq/" + std::to_string(rank_), to_bytes(fmt::format("{} {} {}", op.seq, op_name(op.kind), op.bytes())));
  } catch (const std::exception&) {
    // Deliberately ignored: see the header.
  }
}

namespace {

// One "seq/<rank>" record: "12 all_reduce 4000" (older writers: just "12").
struct SeqRecord {
  int64_t seq = 0;  // 0: the rank issued nothing yet
  std::string op;   // empty when the record does not say
  size_t bytes = 0;
};

SeqRecord read_record(Store& store, int rank) {
  std::string key = "seq/" + std::to_string(rank);
  SeqRecord r;
  if (!store.check({key})) return r;
  std::string value = to_string(store.get(key, kRecordReadTimeout));
  char op[32] = {};
  unsigned long long bytes = 0;
  long long seq = 0;
  int fields = std::sscanf(value.c_str(), "%lld %31s %llu", &seq, op, &bytes);
  TANDEM_CHECK(fields >= 1, "malformed seq record '" + value + "'");
  r.seq = seq;
  if (fields == 3) {
    r.op = op;
    r.bytes = static_cast<size_t>(bytes);
  }
  return r;
}

}  // namespace

std::vector<std::pair<int, int64_t>> GroupTracker::behind(int64_t seq) const {
  std::vector<std::pair<int, int64_t>> out;
  for (int r = 0; r < size_; r++) {
    if (r == rank_) continue;
    int64_t last = read_record(*store_, r).seq;
    if (last < seq) out.emplace_back(r, last);
  }
  return out;
}

std::string GroupTracker::rank_name(int group_rank) const {
  int world = world_ranks_[group_rank];
  return world == group_rank ? fmt::format("rank {}", group_rank)
                             : fmt::format("rank {} (world rank {})", group_rank, world);
}

std::string GroupTracker::progress(const OpDesc& op) const {
  try {
    std::vector<std::string> behind_names, mismatched;
    for (int r = 0; r < size_; r++) {
      if (r == rank_) continue;
      SeqRecord rec = read_record(*store_, r);
      if (rec.seq < op.seq) {
        behind_names.push_back(fmt::format("{} (last issued #{})", rank_name(r), rec.seq));
      } else if (rec.seq == op.seq && !rec.op.empty() && (rec.op != op_name(op.kind) || rec.bytes != op.bytes())) {
        mismatched.push_back(fmt::format("{} issued #{} as {} ({} bytes)", rank_name(r), rec.seq, rec.op, rec.bytes));
      }
    }
    if (behind_names.empty() && mismatched.empty())
      return "every rank has issued it: a rank is stuck in an earlier operation, or the timeout is too short for "
             "the transfer";
    std::string out;
    if (!behind_names.empty()) out = "ranks that have not issued it: " + join_ranks(behind_names);
    if (!mismatched.empty())
      out += (out.empty() ? "" : "; ") + std::string("ranks that issued a different collective: ") + join_ranks(mismatched);
    return out;
  } catch (const std::exception& e) {
    return fmt::format("the ranks' progress could not be read from the store ({})", e.what());
  }
}

std::string GroupTracker::timeout_message(const OpDesc& op, Millis waited) const {
  const char* name = op_name(op.kind);
  if (is_p2p(op.kind)) {
    return fmt::format("{} {} #{} {} {} ({} bytes, group of {}) did not complete within {} ms on {}; {} has not "
                       "issued the matching {} or is stuck before it",
                       backend_, name, op.seq, op.kind == OpKind::send ? "to" : "from", rank_name(op.peer),
                       op.bytes(), size_, waited.count(), rank_name(rank_), rank_name(op.peer),
                       op.kind == OpKind::send ? "recv" : "send");
  }
  return fmt::format("{} {} #{} ({} bytes, group of {}) did not complete within {} ms on {}; {}", backend_, name,
                     op.seq, op.bytes(), size_, waited.count(), rank_name(rank_), progress(op));
}

std::string GroupTracker::stuck_message(const OpDesc& op, Millis age, const std::string& progress,
                                        const std::vector<int>& silent, Millis silent_for) const {
  const char* name = op_name(op.kind);
  double seconds = static_cast<double>(age.count()) / 1000.0;
  std::string out;
  if (is_p2p(op.kind)) {
    out = fmt::format("watchdog: {} {} #{} {} {} ({} bytes, group of {}) stuck for {:.1f} s on {}; {} has not "
                      "issued the matching {} or is stuck before it",
                      backend_, name, op.seq, op.kind == OpKind::send ? "to" : "from", rank_name(op.peer), op.bytes(),
                      size_, seconds, rank_name(rank_), rank_name(op.peer), op.kind == OpKind::send ? "recv" : "send");
  } else {
    out = fmt::format("watchdog: {} {} #{} ({} bytes, group of {}) stuck for {:.1f} s on {}; {}", backend_, name,
                      op.seq, op.bytes(), size_, seconds, rank_name(rank_), progress);
  }
  if (!silent.empty()) {
    std::vector<std::string> names;
    for (int r : silent) names.push_back(rank_name(r));
    out += fmt::format("; no sign of life for {:.1f} s from {} (stopped, or its process hangs)",
                       static_cast<double>(silent_for.count()) / 1000.0, join_ranks(names));
  }
  return out;
}

void GroupTracker::heartbeat() const {
  try {
    store_->add("alive/" + std::to_string(rank_), 1);
  } catch (const std::exception&) {
    // Best effort, as record_issue.
  }
}

std::vector<int64_t> GroupTracker::heartbeats() const {
  std::vector<int64_t> out(size_, -1);
  for (int r = 0; r < size_; r++) {
    std::string key = "alive/" + std::to_string(r);
    if (store_->check({key})) out[r] = std::stoll(to_string(store_->get(key, kRecordReadTimeout)));
  }
  return out;
}

void await_all_ranks(Store& store, int rank, int size, const std::string& what, Millis timeout) {
  store.set("arrived/" + std::to_string(rank), to_bytes("1"));
  std::vector<std::string> keys;
  for (int r = 0; r < size; r++) keys.push_back("arrived/" + std::to_string(r));
  try {
    store.wait(keys, timeout);
  } catch (const StoreTimeout&) {
    throw CollectiveTimeout(fmt::format("{} of a group of {} did not complete within {} ms on rank {}; ranks that "
                                        "have not arrived: {} (did every rank start, with the same world size?)",
                                        what, size, timeout.count(), rank,
                                        rank_list(ranks_without(store, "arrived/", size))));
  }
}

std::vector<int> split_members(Store& store, int rank, int size, int64_t split_id, int color, int key,
                               Millis timeout) {
  std::string prefix = fmt::format("split/{}/", split_id);
  store.set(prefix + std::to_string(rank), to_bytes(fmt::format("{} {}", color, key)));
  std::vector<std::string> keys;
  for (int r = 0; r < size; r++) keys.push_back(prefix + std::to_string(r));
  try {
    store.wait(keys, timeout);
  } catch (const StoreTimeout&) {
    throw CollectiveTimeout(fmt::format("split #{} of a group of {} did not complete within {} ms on rank {}; "
                                        "ranks that have not called it: {}",
                                        split_id, size, timeout.count(), rank,
                                        rank_list(ranks_without(store, prefix, size))));
  }
  std::vector<std::tuple<int, int>> mine;  // (key, rank) of the ranks with my color
  for (int r = 0; r < size; r++) {
    int their_color = 0, their_key = 0;
    std::string value = to_string(store.get(keys[r], timeout));
    TANDEM_CHECK(std::sscanf(value.c_str(), "%d %d", &their_color, &their_key) == 2,
                 "malformed split record '" + value + "'");
    if (their_color == color) mine.emplace_back(their_key, r);
  }
  std::sort(mine.begin(), mine.end());
  std::vector<int> members;
  for (auto [k, r] : mine) members.push_back(r);
  return members;
}

std::string split_prefix(int64_t split_id, int color) { return fmt::format("group/{}/color/{}", split_id, color); }

}  // namespace tandem::collectives::detail

namespace tandem::collectives {

CommGroup::~CommGroup() noexcept(false) {
  if (std::uncaught_exceptions() == exceptions_) {
    comm_.group_end();
    return;
  }
  try {
    comm_.group_end();
  } catch (const std::exception& e) {
    log_warn("ending a {} group while an error propagates failed too: {}", comm_.backend(), e.what());
  }
}

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::avg: return "avg";
    case ReduceOp::max: return "max";
  }
  return "?";
}

}  // namespace tandem::collectives
