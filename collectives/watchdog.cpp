// The watchdog thread (Note [Watchdog] in watchdog.h).
#include "collectives/watchdog.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <future>
#include <optional>
#include <thread>
#include <vector>

#include "collectives/comm_common.h"
#include "runtime/core/error.h"

namespace tandem::collectives {

namespace {
using Clock = std::chrono::steady_clock;

// The store reads of a report wait at most this long (a quarter of the
// operation's timeout, at most 1 s): a rank cut off from the store would
// otherwise wait out its store client's reconnect timeout first, and report
// at twice the operation's timeout.
Millis store_read_budget(Millis timeout) { return std::min(timeout / 4, Millis{1000}); }

// `read()` on a thread of its own, for at most `budget`: its result, or
// nullopt when it failed or is still waiting (the thread is left to finish
// or to die with the process, which a report ends).
template <typename T>
std::optional<T> read_within(Millis budget, std::function<T()> read) {
  auto result = std::make_shared<std::promise<std::optional<T>>>();
  std::future<std::optional<T>> future = result->get_future();
  std::thread([result, read = std::move(read)] {
    try {
      result->set_value(read());
    } catch (const std::exception&) {
      result->set_value(std::nullopt);
    }
  }).detach();
  if (future.wait_for(budget) != std::future_status::ready) return std::nullopt;
  return future.get();
}
}  // namespace

struct Watchdog::Entry {
  Id id = 0;
  detail::OpDesc op;
  std::shared_ptr<const detail::GroupTracker> tracker;
  Clock::time_point issued;
  Millis timeout{0};
  Poll completed;
  // Under the watchdog's mutex:
  bool reported = false;
  std::vector<int64_t> heartbeats;  // every rank's, taken once the op is half its timeout old
  Clock::time_point heartbeats_at;
};

Watchdog::Watchdog(Millis interval) : interval_(interval) {}

Watchdog::~Watchdog() { stop(); }

Watchdog& Watchdog::process() {
  static Watchdog watchdog;
  return watchdog;
}

void Watchdog::start(OnStuck on_stuck) {
  std::lock_guard<std::mutex> lock(mutex_);
  TANDEM_CHECK(!running_.load(), "the watchdog is already running");
  TANDEM_CHECK(static_cast<bool>(on_stuck), "the watchdog needs an on_stuck callback");
  on_stuck_ = std::move(on_stuck);
  stopping_ = false;
  running_ = true;
  thread_ = std::thread([this] { loop(); });
}

void Watchdog::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    running_ = false;
    stopping_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mutex_);
  entries_.clear();
  trackers_.clear();
  on_stuck_ = nullptr;
}

Watchdog::Id Watchdog::begin(const detail::OpDesc& op, std::shared_ptr<const detail::GroupTracker> tracker,
                             Millis timeout, Poll completed) {
  if (!running_.load()) return 0;
  auto e = std::make_shared<Entry>();
  e->op = op;
  e->tracker = std::move(tracker);
  e->issued = Clock::now();
  e->timeout = timeout;
  e->completed = std::move(completed);
  std::lock_guard<std::mutex> lock(mutex_);
  e->id = next_id_++;
  trackers_.insert_or_assign(e->tracker.get(), e->tracker);  // an address may be reused
  entries_.emplace(e->id, e);
  return e->id;
}

void Watchdog::end(Id id) {
  if (id == 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  entries_.erase(id);
}

void Watchdog::expired(Id id) {
  if (id == 0) return;
  std::shared_ptr<Entry> e;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find(id);
    // A wait shorter than the operation's timeout is the caller's choice, not a hang.
    if (it == entries_.end() || Clock::now() - it->second->issued < it->second->timeout) return;
    e = it->second;
  }
  report(e);
}

void Watchdog::gave_up(Id id, const std::string& why) {
  if (id == 0) return;
  std::shared_ptr<Entry> e;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find(id);
    if (it == entries_.end()) return;
    if (Clock::now() - it->second->issued < it->second->timeout / 2) {
      entries_.erase(it);
      return;
    }
    e = it->second;
  }
  report(e, why);
}

void Watchdog::loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    lock.unlock();
    check();
    lock.lock();
    cv_.wait_for(lock, interval_, [&] { return stopping_; });
  }
}

// One check: heartbeats, completions that only a poll reveals, and the overdue.
// Store reads happen outside the lock, so begin/end never wait for the store.
void Watchdog::check() {
  std::vector<std::shared_ptr<Entry>> entries;
  std::vector<std::shared_ptr<const detail::GroupTracker>> trackers;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [id, e] : entries_) entries.push_back(e);
    for (auto it = trackers_.begin(); it != trackers_.end();) {
      if (auto t = it->second.lock()) {
        trackers.push_back(std::move(t));
        ++it;
      } else {
        it = trackers_.erase(it);
      }
    }
  }
  for (const auto& t : trackers) t->heartbeat();
  Clock::time_point now = Clock::now();
  for (const auto& e : entries) {
    if (e->completed && e->completed()) {
      end(e->id);
      continue;
    }
    auto age = now - e->issued;
    bool need_snapshot;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (e->reported) continue;
      need_snapshot = age >= e->timeout / 2 && e->heartbeats.empty();
    }
    if (need_snapshot) {
      // Best effort: without a snapshot the report names no silent ranks.
      auto tracker = e->tracker;
      std::vector<int64_t> beats =
          read_within<std::vector<int64_t>>(store_read_budget(e->timeout), [tracker] { return tracker->heartbeats(); })
              .value_or(std::vector<int64_t>{});
      std::lock_guard<std::mutex> lock(mutex_);
      e->heartbeats = std::move(beats);
      e->heartbeats_at = Clock::now();
    }
    if (age >= e->timeout) report(e);
  }
}

// Reports `e` once: builds the message (store reads) and calls on_stuck.
void Watchdog::report(const std::shared_ptr<Entry>& e, const std::string& why) {
  OnStuck on_stuck;
  std::vector<int64_t> before;
  Clock::time_point before_at;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (e->reported || !on_stuck_) return;
    e->reported = true;
    on_stuck = on_stuck_;
    before = e->heartbeats;
    before_at = e->heartbeats_at;
  }
  Clock::time_point now = Clock::now();
  auto silent_for = std::chrono::duration_cast<Millis>(now - before_at);
  std::vector<int> silent;
  // A counter that did not move over a few checks: that rank's watchdog is
  // not running. A rank with no counter at all counts too: one stopped
  // before its watchdog's first check never wrote one.
  Millis budget = store_read_budget(e->timeout);
  auto tracker = e->tracker;
  if (!before.empty() && silent_for >= 2 * interval_) {
    // Best effort, as the snapshot.
    std::vector<int64_t> after =
        read_within<std::vector<int64_t>>(budget, [tracker] { return tracker->heartbeats(); })
            .value_or(std::vector<int64_t>{});
    for (size_t r = 0; r < after.size() && r < before.size(); r++)
      if (static_cast<int>(r) != tracker->rank() && after[r] == before[r]) silent.push_back(static_cast<int>(r));
  }
  detail::OpDesc op = e->op;
  std::string progress =
      read_within<std::string>(budget, [tracker, op] { return tracker->progress(op); })
          .value_or(fmt::format("the ranks' progress could not be read from the store within {} ms (is it reachable?)",
                                budget.count()));
  auto age = std::chrono::duration_cast<Millis>(now - e->issued);
  std::string message = tracker->stuck_message(e->op, age, progress, silent, silent_for);
  if (!why.empty()) message += "; then it failed here: " + why;
  on_stuck(message);
}

}  // namespace tandem::collectives
