// The watchdog: one background thread per process that notices a collective
// in flight past its timeout and reports it, whether or not anyone waits.
//
// Note [Watchdog]
// Every communicator registers each operation it issues with the process's
// Watchdog (begin) and unregisters it when it completes or fails on its own
// (end). A running watchdog checks every kCheckInterval: an operation in
// flight longer than its timeout is reported once, through the on_stuck
// callback, with the message the seq records allow ("watchdog: gloo
// all_reduce #12 (4000 bytes, group of 2) stuck for 3.2 s on rank 0; ranks
// that have not issued it: rank 1 (last issued #11)", Note [Naming the
// missing ranks] in comm_common.h). When a backend's own timeout fires first
// (Gloo's context timeout, a Work::wait that runs out) it calls expired(),
// which reports at once: the watchdog's line is what every rank says, not a
// race between it and an exception. So a report comes between the timeout
// and the timeout plus one check interval, well within twice the timeout.
// The first rank to give up on a collective ends the others' wait in it
// early: Gloo closes every connection of a rank whose collective timed out,
// and a rank exits once its watchdog reported. A rank stuck in the same
// collective then sees it fail with a closed connection just before its
// own timeout; its backend calls gave_up(), which reports it at once (the
// error at the end of the line) when it was in flight for at least half
// its timeout, so every rank stuck in a collective reports it. A younger
// operation that fails so is a crashed peer, not a hang: the caller's
// exception says it. The report's store reads (which ranks issued what,
// whose heartbeat stopped) wait at most a quarter of the timeout (1 s at
// most): a rank cut off from the store reports without them, saying so,
// instead of waiting out its store client's reconnect timeout.
// The library never exits: the program installs on_stuck (tools/train.cpp
// logs the line and exits with kExitStuck, docs/FAULT_TOLERANCE.md), so the
// launcher sees the rank fail and stops the others. A watchdog that is not
// running registers nothing and costs one atomic load per operation.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "collectives/store.h"

namespace tandem::collectives {

namespace detail {
struct OpDesc;
class GroupTracker;
}  // namespace detail

class Watchdog {
 public:
  using OnStuck = std::function<void(const std::string& message)>;
  using Id = uint64_t;  // 0: not registered
  // Polls an operation's completion where no thread reports it (NCCL events).
  using Poll = std::function<bool()>;

  static constexpr Millis kCheckInterval{250};

  explicit Watchdog(Millis interval = kCheckInterval);
  ~Watchdog();  // stop()
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // The one every communicator registers with.
  static Watchdog& process();

  // Starts the check thread; `on_stuck` runs on it (or on the thread that
  // calls expired()) once per stuck operation. Throws if already running.
  void start(OnStuck on_stuck);
  // Stops the thread and forgets every operation; idempotent.
  void stop();
  bool running() const { return running_.load(); }

  // Registers an operation just issued; 0 when the watchdog is not running.
  Id begin(const detail::OpDesc& op, std::shared_ptr<const detail::GroupTracker> tracker, Millis timeout,
           Poll completed = {});
  // The operation completed, or failed other than by a timeout: forget it.
  void end(Id id);
  // The backend's own timeout ran out for this operation: report it now.
  void expired(Id id);
  // The backend failed this operation other than by a timeout (`why`: a
  // peer closed its connection): reported now, ending with `why`, if it was
  // in flight for at least half its timeout; else forgotten, as by end().
  void gave_up(Id id, const std::string& why);

 private:
  struct Entry;
  void loop();
  void check();
  void report(const std::shared_ptr<Entry>& e, const std::string& why = "");

  Millis interval_;
  std::atomic<bool> running_{false};
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stopping_ = false;
  OnStuck on_stuck_;
  Id next_id_ = 1;
  std::map<Id, std::shared_ptr<Entry>> entries_;
  std::map<const detail::GroupTracker*, std::weak_ptr<const detail::GroupTracker>> trackers_;  // to heartbeat
  std::thread thread_;
};

}  // namespace tandem::collectives
