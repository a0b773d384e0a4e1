// One node's launcher, attempt after attempt: Note [Restarts] in launcher.h.
#include "tools/launcher.h"

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>

#include "collectives/tcp_store.h"
#include "runtime/core/error.h"

namespace tandem::tools {

namespace {

using collectives::Store;
using Clock = std::chrono::steady_clock;

constexpr Millis kSettle{500};               // Note [Stopping workers]: for the others to end on their own
constexpr Millis kTick{20};                  // how often workers and signals are checked
constexpr Millis kStorePoll{200};            // how often the store's failure keys are checked
constexpr Millis kMinHeartbeat{250};         // Note [Lost nodes]: heartbeats come every
constexpr Millis kMaxHeartbeat{1000};        //   node_timeout / 4, within these bounds
constexpr Millis kFailureAckTimeout{10000};  // after a failure, for the others to notice
constexpr Millis kRestartMeet{60000};        // for every launcher to reach a restart's barrier
constexpr Millis kOutputDrain{2000};         // for pipes a worker's children hold open

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// A failure as the store holds it: "code cause".
struct Cause {
  int code = 0;
  std::string text;
  bool empty() const { return text.empty(); }
  std::string encode() const { return fmt::format("{} {}", code, text); }
  static Cause decode(const std::string& value) {
    size_t space = value.find(' ');
    if (space == std::string::npos) return {1, value};
    return {std::atoi(value.substr(0, space).c_str()), value.substr(space + 1)};
  }
};

class Launcher {
 public:
  Launcher(const LaunchPlan& plan, std::shared_ptr<Store> store, const StartWorkers& start)
      : p_(plan),
        store_(std::move(store)),
        start_(start),
        heartbeat_every_(std::clamp(p_.node_timeout / 4, kMinHeartbeat, kMaxHeartbeat)) {}

  int run() {
    for (attempt_ = 0;; attempt_++) {
      failure_ = {};
      remote_failure_ = false;
      alive_.clear();
      if (run_attempt()) return 0;
      if (attempt_ == 0) first_ = failure_;
      if (final_ || attempt_ >= p_.max_restarts) return give_up();
      write_locked(2, fmt::format("tandem launch: {}; restarting the job (restart {} of {})\n", failure_.text,
                                  attempt_ + 1, p_.max_restarts));
      if (!meet_for_restart()) return give_up();
    }
  }

 private:
  std::string key(const std::string& name) const { return fmt::format("launch/{}/{}", name, attempt_); }
  bool failed() const { return !failure_.empty(); }
  bool restartable() const { return !final_ && attempt_ < p_.max_restarts; }

  void fail(int code, std::string why) {
    if (!failed()) failure_ = {code, std::move(why)};
  }

  // No restart after this: the job ends with its first failure.
  void end_restarts(const std::string& why) {
    if (final_) return;
    final_ = true;
    final_why_ = why;
  }

  // Runs this node's part of the current attempt; true when the attempt
  // succeeded on every node (or on this one, where nobody waits for it).
  bool run_attempt() {
    std::unique_ptr<WorkerGroup> group = start_(attempt_);
    supervise(*group);
    if (failed()) {
      publish_failure();
      int sig = signal_ ? signal_ : SIGTERM;
      int seen = signals_received();
      auto signalled = [seen] { return signals_received() > seen; };
      if (!final_) group->await_all(kSettle, signalled);  // Note [Stopping workers]
      group->stop(sig, p_.stop_grace, signalled);
      if (signals_received() > 0 && !final_) {  // stopped by hand while stopping: no restart
        end_restarts(signal_text(last_signal()));
        publish_abort();
      }
    }
    // Every worker is reaped: the attempt has ended here. Said before the
    // output drains (up to kOutputDrain) so that node 0, which stops
    // watching a node once it is done, never takes the drain for silence.
    report_done();
    group->finish_output(kOutputDrain);
    group.reset();
    if (failed()) return false;
    if (store_) await_others();
    if (failed()) return false;
    leave();
    return true;
  }

  std::string signal_text(int sig) const {
    return p_.nnodes > 1 ? fmt::format("the launcher on {} (node {}) received {}; stopped its workers", p_.host,
                                       p_.node_rank, signal_name(sig))
                         : fmt::format("received {}; stopped the workers", signal_name(sig));
  }

  bool got_signal() {
    if (signals_received() == 0) return false;
    if (!final_) {
      signal_ = last_signal();
      end_restarts(signal_text(signal_));
      fail(128 + signal_, final_why_);
    }
    return true;
  }

  void supervise(WorkerGroup& group) {
    auto next_poll = Clock::now();
    while (true) {
      // Workers found ended in one pass died in an unknown order; one killed
      // by a signal is the likelier cause of the others' errors (a peer's
      // closed connection) than the other way round.
      std::vector<ExitCause> ended = group.reap();
      std::stable_partition(ended.begin(), ended.end(), [](const ExitCause& c) { return c.signaled; });
      for (const ExitCause& c : ended)
        if (c.failed()) fail(c.exit_code(), c.describe(p_.nnodes > 1 ? p_.host : ""));
      if (got_signal() || failed() || group.all_exited()) return;
      if (store_ && Clock::now() >= next_poll) {
        next_poll = Clock::now() + kStorePoll;
        try {
          if (check_published_failure()) return;
          heartbeat(/*watch=*/true);
        } catch (const std::exception& e) {
          return lose_store(e);
        }
        if (failed()) return;
      }
      std::this_thread::sleep_for(kTick);
    }
  }

  // Adopts another node's failure of this attempt (and its abort, if any).
  bool check_published_failure() {
    if (!store_->check({key("failed")})) return false;
    remote_failure_ = true;
    take_published_failure();
    return true;
  }

  void take_published_failure() {
    failure_ = Cause::decode(collectives::to_string(store_->get(key("failed"), kStorePoll)));  // known to exist
    check_abort();
  }

  bool check_abort() {
    if (!store_->check({"launch/abort"})) return false;
    end_restarts(Cause::decode(collectives::to_string(store_->get("launch/abort", kStorePoll))).text);
    return true;
  }

  // A launcher other than node 0 counts its heartbeats; node 0 watches them
  // (when `watch`) and fails the job when a node still running went silent
  // for node_timeout (Note [Lost nodes]).
  void heartbeat(bool watch) {
    if (Clock::now() < next_heartbeat_) return;
    next_heartbeat_ = Clock::now() + heartbeat_every_;
    if (p_.node_rank != 0) {
      store_->add(fmt::format("launch/alive/{}", p_.node_rank), 1);
      return;
    }
    if (!watch) return;
    if (alive_.empty()) {
      alive_.assign(p_.nnodes, -1);
      changed_.assign(p_.nnodes, Clock::now());
    }
    for (int i = 1; i < p_.nnodes; i++) {
      if (store_->check({fmt::format("{}/{}", key("done"), i)})) continue;
      int64_t n = store_->add(fmt::format("launch/alive/{}", i), 0);
      if (n != alive_[i]) {
        alive_[i] = n;
        changed_[i] = Clock::now();
      } else if (Clock::now() - changed_[i] > p_.node_timeout) {
        std::string why = fmt::format("node {} lost: no heartbeat from its launcher{} for {:.1f} s (--node-timeout "
                                      "{}); its workers' outcome is unknown",
                                      i, launcher_of(i), seconds(Clock::now() - changed_[i]),
                                      seconds(p_.node_timeout));
        peer_lost_ = true;
        end_restarts(why);
        fail(1, why);
        publish_failure();
        return;
      }
    }
  }

  // " (pid P on HOST)", as node I's launcher wrote it at the rendezvous.
  std::string launcher_of(int node) {
    std::string held = collectives::to_string(store_->get(fmt::format("launch/node/{}", node), kStorePoll));
    size_t host = held.find(' '), pid = held.rfind(' ');
    if (host == std::string::npos || pid <= host) return "";
    return fmt::format(" (pid {} on {})", held.substr(pid + 1), held.substr(host + 1, pid - host - 1));
  }

  // Note [Lost nodes]: a store that does not answer within node_timeout (the
  // client's reply timeout), or whose connection fails, ends the job here.
  void lose_store(const std::exception& e) {
    store_.reset();
    std::string why;
    if (const auto* silent = dynamic_cast<const collectives::StoreReplyTimeout*>(&e))
      why = fmt::format("lost the store at {}:{}: no reply within {:.1f} s (--node-timeout {}); is node 0's launcher "
                        "running, and the network to it up?",
                        p_.master_addr, p_.master_port, seconds(silent->waited()), seconds(p_.node_timeout));
    else
      why = fmt::format("lost the store at {}:{} (did node 0's launcher stop?): {}", p_.master_addr, p_.master_port,
                        e.what());
    end_restarts(why);
    fail(1, why);
  }

  // The first failure of an attempt published wins; a later one adopts it.
  void publish_failure() {
    publish_abort();
    if (!store_ || remote_failure_) return;
    try {
      std::string mine = failure_.encode();
      std::string held = collectives::to_string(store_->compare_set(key("failed"), {}, collectives::to_bytes(mine)));
      if (held != mine) failure_ = Cause::decode(held);
      remote_failure_ = true;
    } catch (const std::exception&) {
      store_.reset();  // keep our own cause: it is what happened here
      end_restarts(failure_.text);
    }
  }

  // Tells the other launchers not to restart (the first reason wins).
  void publish_abort() {
    if (!store_ || !final_) return;
    try {
      store_->compare_set("launch/abort", {}, collectives::to_bytes(Cause{1, final_why_}.encode()));
    } catch (const std::exception&) {
      store_.reset();
    }
  }

  void report_done() {
    if (!store_) return;
    try {
      store_->set(fmt::format("{}/{}", key("done"), p_.node_rank), collectives::to_bytes("1"));
      store_->add(key("done"), 1);
    } catch (const std::exception& e) {
      lose_store(e);
    }
  }

  // After this node's workers succeeded: waits until every node's did, or
  // a failure of this attempt shows up (then the job restarts or ends).
  // Node 0 waits on heartbeats, not a clock; the others only wait when a
  // failure elsewhere could still restart the job.
  void await_others() {
    if (p_.node_rank != 0 && !restartable()) return;
    try {
      while (store_->add(key("done"), 0) < p_.nnodes) {
        if (got_signal()) return publish_failure();
        if (check_published_failure()) return;
        heartbeat(/*watch=*/true);
        if (failed()) return;
        std::this_thread::sleep_for(kStorePoll);
      }
      // A failed node publishes its failure before it counts itself done, so
      // once every node is done one more look cannot miss it.
      check_published_failure();
    } catch (const std::exception& e) {
      lose_store(e);
    }
  }

  // Where this launcher exits: the others count themselves out, node 0
  // serves the store until they have (or a failure has had time to spread).
  void leave() {
    if (!store_) return;
    try {
      if (p_.node_rank != 0) {
        store_->add("launch/gone", 1);
        return;
      }
      if (peer_lost_) return;
      auto deadline = Clock::now() + kFailureAckTimeout;
      int seen = signals_received();
      while (store_->add("launch/gone", 0) < p_.nnodes - 1 && Clock::now() < deadline && signals_received() == seen) {
        // A node whose launcher died never counts itself out: name it when
        // its heartbeats stop, rather than wait out the whole grace.
        heartbeat(/*watch=*/true);
        if (peer_lost_) return;
        std::this_thread::sleep_for(kStorePoll);
      }
    } catch (const std::exception&) {
      store_.reset();
    }
  }

  // Every launcher counts itself in for attempt_ + 1 and waits for the rest.
  bool meet_for_restart() {
    if (!store_) return true;
    int next = attempt_ + 1;
    std::string ready = fmt::format("launch/ready/{}", next);
    try {
      store_->set(fmt::format("{}/{}", ready, p_.node_rank), collectives::to_bytes("1"));
      store_->add(ready, 1);
      store_->compare_set("launch/attempt", collectives::to_bytes(std::to_string(attempt_)),
                          collectives::to_bytes(std::to_string(next)));
      auto deadline = Clock::now() + kRestartMeet;
      while (store_->add(ready, 0) < p_.nnodes) {
        if (check_abort()) return false;
        if (signals_received() > 0) {
          end_restarts(signal_text(last_signal()));
        } else if (Clock::now() >= deadline) {
          std::string missing;
          for (int i = 0; i < p_.nnodes; i++)
            if (!store_->check({fmt::format("{}/{}", ready, i)})) missing += fmt::format(" {}", i);
          end_restarts(fmt::format("node(s){} did not come back for restart {} within {} s", missing, next,
                                   kRestartMeet.count() / 1000));
        }
        if (final_) {
          publish_abort();
          // Whoever started attempt `next` already stops on this.
          store_->compare_set(fmt::format("launch/failed/{}", next), {},
                              collectives::to_bytes(Cause{1, final_why_}.encode()));
          return false;
        }
        heartbeat(/*watch=*/false);
        std::this_thread::sleep_for(kStorePoll);
      }
      return true;
    } catch (const std::exception& e) {
      lose_store(e);
      return false;
    }
  }

  // The job ends with its first failure, saying why no restart followed.
  int give_up() {
    leave();
    if (final_ && final_why_ != first_.text) write_locked(2, fmt::format("tandem launch: no more restarts: {}\n", final_why_));
    if (!final_ && attempt_ > 0)
      write_locked(2, fmt::format("tandem launch: {}; no restarts left (--max-restarts {}); the job's first failure "
                                  "follows\n",
                                  failure_.text, p_.max_restarts));
    write_locked(2, fmt::format("tandem launch: {}\n", first_.text));
    return first_.code != 0 ? first_.code : 1;
  }

  LaunchPlan p_;
  std::shared_ptr<Store> store_;
  StartWorkers start_;
  int attempt_ = 0;
  Cause failure_;  // this attempt's first failure; empty while all is well
  Cause first_;    // the job's first failure (attempt 0's)
  bool remote_failure_ = false;  // failure_ is the one published for this attempt
  bool final_ = false;           // no restart after this attempt
  std::string final_why_;
  int signal_ = 0;          // the signal the launcher got, when that is the failure
  bool peer_lost_ = false;  // a launcher went silent: nobody is left to wait for
  Millis heartbeat_every_;
  Clock::time_point next_heartbeat_ = Clock::now();
  std::vector<int64_t> alive_;
  std::vector<Clock::time_point> changed_;
};

}  // namespace

int run_job(const LaunchPlan& plan, std::shared_ptr<collectives::Store> store, const StartWorkers& start) {
  return Launcher(plan, std::move(store), start).run();
}

}  // namespace tandem::tools
