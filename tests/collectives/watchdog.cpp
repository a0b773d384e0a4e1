// The watchdog (collectives/watchdog.h): a stuck collective is reported
// within twice its timeout, naming the ranks that did not issue it, a rank
// that issued another collective under the same number, and a rank that
// shows no sign of life; operations that complete are never reported.
// Gloo ranks are threads of this process over one MemoryStore, as in
// gloo.cpp; tracker-level cases drive GroupTrackers directly.
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "collectives/comm_common.h"
#include "collectives/communicator.h"
#include "collectives/watchdog.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::collectives;
using Clock = std::chrono::steady_clock;

namespace {

constexpr Millis kWait{10000};  // generous: only a broken build waits this long

// Collects on_stuck messages instead of exiting.
struct Reports {
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<std::string> messages;
  Clock::time_point first;

  Watchdog::OnStuck callback() {
    return [this](const std::string& m) {
      std::lock_guard<std::mutex> lock(mutex);
      if (messages.empty()) first = Clock::now();
      messages.push_back(m);
      cv.notify_all();
    };
  }
  // The first message, or "" after `timeout`.
  std::string wait_first(Millis timeout) {
    std::unique_lock<std::mutex> lock(mutex);
    cv.wait_for(lock, timeout, [&] { return !messages.empty(); });
    return messages.empty() ? "" : messages.front();
  }
  size_t count() {
    std::lock_guard<std::mutex> lock(mutex);
    return messages.size();
  }
};

// Runs the process's watchdog for one test.
struct ProcessWatchdog {
  explicit ProcessWatchdog(Reports& r) { Watchdog::process().start(r.callback()); }
  ~ProcessWatchdog() { Watchdog::process().stop(); }
};

CommOptions options(Millis timeout) {
  CommOptions o;
  o.timeout = timeout;
  return o;
}

Buffer buf_of(std::vector<float>& v) { return {v.data(), static_cast<int64_t>(v.size()), DType::f32, Device::cpu()}; }

std::shared_ptr<detail::GroupTracker> tracker(std::shared_ptr<Store> store, int rank) {
  return std::make_shared<detail::GroupTracker>(store, rank, 2, "gloo", std::vector<int>{0, 1});
}

detail::OpDesc all_reduce_op(int64_t seq, std::vector<float>& x) {
  return {.kind = detail::OpKind::all_reduce, .out = buf_of(x), .in = {}, .seq = seq};
}

}  // namespace

TEST_CASE("the watchdog reports a collective that rank 1 never issues, within 2x the timeout", "[watchdog]") {
  constexpr Millis kTimeout{1000};
  Reports reports;
  ProcessWatchdog running(reports);
  std::shared_ptr<Store> store = make_memory_store();
  std::promise<void> reported;
  std::thread rank1([&] {
    auto comm = make_gloo_communicator(store, 1, 2, options(kTimeout));
    comm->barrier()->wait(kWait);
    reported.get_future().wait();  // never issues the all_reduce
  });
  std::string message;
  Millis took{0};
  {
    auto comm = make_gloo_communicator(store, 0, 2, options(kTimeout));
    comm->barrier()->wait(kWait);
    std::vector<float> x(1000, 1.f);
    Clock::time_point issued = Clock::now();
    std::shared_ptr<Work> work = comm->all_reduce(buf_of(x), ReduceOp::sum);  // nobody waits for it
    message = reports.wait_first(kWait);
    took = std::chrono::duration_cast<Millis>(Clock::now() - issued);
    reported.set_value();
    rank1.join();
  }
  INFO(message);
  REQUIRE(took >= kTimeout);
  REQUIRE(took < 2 * kTimeout);
  REQUIRE(message.find("watchdog: gloo all_reduce #2 (4000 bytes, group of 2) stuck for") != std::string::npos);
  REQUIRE(message.find("on rank 0; ranks that have not issued it: rank 1 (last issued #1)") != std::string::npos);
  REQUIRE(reports.count() == 1);  // once per operation
}

TEST_CASE("the watchdog stays quiet for operations that complete", "[watchdog]") {
  constexpr Millis kTimeout{300};
  Reports reports;
  ProcessWatchdog running(reports);
  std::shared_ptr<Store> store = make_memory_store();
  auto rank = [&](int r) {
    auto comm = make_gloo_communicator(store, r, 2, options(kTimeout));
    std::vector<float> x(1000, 1.f);
    std::vector<std::shared_ptr<Work>> unwaited;
    for (int i = 0; i < 50; i++) {
      comm->all_reduce(buf_of(x), ReduceOp::sum)->wait(kWait);
      unwaited.push_back(comm->barrier());  // completes, though nobody waits
    }
    comm->barrier()->wait(kWait);
    std::this_thread::sleep_for(3 * kTimeout);  // long past every timeout: any leftover would be reported
  };
  std::thread rank1(rank, 1);
  rank(0);
  rank1.join();
  REQUIRE(reports.count() == 0);
}

TEST_CASE("the watchdog names a rank that issued another collective under the same number", "[watchdog]") {
  constexpr Millis kTimeout{200};
  Reports reports;
  Watchdog watchdog(Millis(50));
  watchdog.start(reports.callback());
  std::shared_ptr<Store> store = make_memory_store();
  auto t0 = tracker(store, 0), t1 = tracker(store, 1);
  std::vector<float> x(1000), y(2);
  detail::OpDesc mine = all_reduce_op(12, x);
  detail::OpDesc theirs = {.kind = detail::OpKind::broadcast, .out = buf_of(y), .in = {}, .peer = 0, .seq = 12};
  t0->record_issue(mine);
  t1->record_issue(theirs);
  Clock::time_point issued = Clock::now();
  watchdog.begin(mine, t0, kTimeout);
  std::string message = reports.wait_first(kWait);
  auto took = Clock::now() - issued;
  watchdog.stop();
  INFO(message);
  REQUIRE(took < 2 * kTimeout);
  REQUIRE(message.find("watchdog: gloo all_reduce #12 (4000 bytes, group of 2)") != std::string::npos);
  REQUIRE(message.find("ranks that issued a different collective: rank 1 issued #12 as broadcast (8 bytes)") !=
          std::string::npos);
  REQUIRE(message.find("have not issued") == std::string::npos);
}

TEST_CASE("the watchdog names a rank whose heartbeat stopped", "[watchdog]") {
  constexpr Millis kTimeout{400};
  Reports reports;
  Watchdog watchdog(Millis(50));
  watchdog.start(reports.callback());
  std::shared_ptr<Store> store = make_memory_store();
  auto t0 = tracker(store, 0), t1 = tracker(store, 1);
  std::vector<float> x(10);
  detail::OpDesc op = all_reduce_op(3, x);
  t0->record_issue(op);
  t1->record_issue(op);  // it issued #3 too, then stopped: only its silence tells
  t1->heartbeat();
  Watchdog::Id id = watchdog.begin(op, t0, kTimeout);
  REQUIRE(id != 0);
  std::string message = reports.wait_first(kWait);
  watchdog.stop();
  INFO(message);
  REQUIRE(message.find("every rank has issued it") != std::string::npos);
  REQUIRE(message.find("s from rank 1 (stopped, or its process hangs)") != std::string::npos);
}

TEST_CASE("a stopped watchdog registers nothing, and end forgets an operation", "[watchdog]") {
  Reports reports;
  Watchdog watchdog(Millis(20));
  std::shared_ptr<Store> store = make_memory_store();
  auto t0 = tracker(store, 0);
  std::vector<float> x(4);
  REQUIRE(watchdog.begin(all_reduce_op(1, x), t0, Millis(10)) == 0);
  watchdog.start(reports.callback());
  Watchdog::Id id = watchdog.begin(all_reduce_op(1, x), t0, Millis(100));
  watchdog.end(id);
  watchdog.expired(id);  // already forgotten: nothing to report
  std::this_thread::sleep_for(Millis(300));
  watchdog.stop();
  REQUIRE(reports.count() == 0);
}
