// The watchdog (collectives/watchdog.h): a stuck collective is reported
// within twice its timeout, naming the ranks that did not issue it, a rank
// that issued another collective under the same number (seen by every rank
// of a real Gloo group), and a rank that shows no sign of life; operations
// that complete are never reported. Gloo ranks are threads of this process
// over one MemoryStore, as in gloo.cpp, sharing the process's watchdog;
// tracker-level cases drive GroupTrackers directly.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <future>
#include <latch>
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
  std::vector<Clock::time_point> times;  // when each message came

  Watchdog::OnStuck callback() {
    return [this](const std::string& m) {
      std::lock_guard<std::mutex> lock(mutex);
      messages.push_back(m);
      times.push_back(Clock::now());
      cv.notify_all();
    };
  }
  // Waits up to `timeout` for `n` messages; the number that came.
  size_t wait_count(size_t n, Millis timeout) {
    std::unique_lock<std::mutex> lock(mutex);
    cv.wait_for(lock, timeout, [&] { return messages.size() >= n; });
    return messages.size();
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

TEST_CASE("an operation that fails after half its timeout is reported with the error; a younger one is not",
          "[watchdog]") {
  Reports reports;
  Watchdog watchdog(Millis(5000));  // checks only at start: the reports here are gave_up's
  watchdog.start(reports.callback());
  std::shared_ptr<Store> store = make_memory_store();
  auto t0 = tracker(store, 0), t1 = tracker(store, 1);
  std::vector<float> x(10);
  detail::OpDesc op = all_reduce_op(4, x);
  t0->record_issue(op);
  t1->record_issue(op);
  watchdog.gave_up(watchdog.begin(op, t0, Millis(4000)), "Connection reset by peer");  // a crash, not a hang
  Watchdog::Id old = watchdog.begin(op, t0, Millis(200));
  std::this_thread::sleep_for(Millis(120));
  watchdog.gave_up(old, "Connection closed by peer [127.0.0.1]:1");
  std::string message = reports.wait_first(kWait);
  watchdog.stop();
  INFO(message);
  REQUIRE(reports.count() == 1);
  REQUIRE(message.starts_with("watchdog: gloo all_reduce #4 (40 bytes, group of 2) stuck for "));
  REQUIRE(message.find(" s on rank 0; every rank has issued it") != std::string::npos);
  REQUIRE(message.ends_with("; then it failed here: Connection closed by peer [127.0.0.1]:1"));
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

TEST_CASE("every rank of a gloo group names the rank that called another collective, within 2x the timeout",
          "[watchdog]") {
  // Ranks 0 and 2 all_reduce 1000 floats as #2 while rank 1 broadcasts 10
  // as #2: Gloo keeps the two apart (each collective has its own slots),
  // so all three wait until the first Gloo timeout. That rank's Gloo closes
  // its connections, which may fail another's wait a moment before its own
  // timeout: reported then too (Note [Watchdog]), at least half the
  // timeout after the issue.
  constexpr Millis kTimeout{1000};
  constexpr int kSize = 3;
  Reports reports;
  ProcessWatchdog running(reports);
  std::shared_ptr<Store> store = make_memory_store();
  std::vector<Clock::time_point> issued(kSize);
  std::vector<std::string> failures(kSize);
  std::vector<std::exception_ptr> errors(kSize);
  std::latch finished(kSize);
  auto rank = [&](int r) {
    std::vector<float> x(r == 1 ? 10 : 1000, 1.f);
    std::shared_ptr<Communicator> comm;
    try {
      comm = make_gloo_communicator(store, r, kSize, options(kTimeout));
      comm->barrier()->wait(kWait);  // #1 on every rank
      issued[r] = Clock::now();
      std::shared_ptr<Work> work = r == 1 ? comm->broadcast(buf_of(x), 0) : comm->all_reduce(buf_of(x), ReduceOp::sum);
      try {
        work->wait(kWait);
      } catch (const std::runtime_error& e) {  // Gloo's timeout, or a closed connection
        failures[r] = e.what();
      }
    } catch (...) {
      errors[r] = std::current_exception();
    }
    // A rank that closed its connections now would fail the collectives the
    // others still wait in (a closed connection, not a timeout, which the
    // watchdog does not report): every rank keeps its communicator until
    // all three have timed out.
    finished.arrive_and_wait();
  };
  std::vector<std::thread> threads;
  for (int r = 0; r < kSize; r++) threads.emplace_back(rank, r);
  for (std::thread& t : threads) t.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
  REQUIRE(reports.wait_count(kSize, kWait) == kSize);  // once per rank
  std::lock_guard<std::mutex> lock(reports.mutex);
  for (int r = 0; r < kSize; r++) {
    INFO("rank " << r << " failed with: " << failures[r]);
    REQUIRE(!failures[r].empty());
    std::string me = fmt::format("on rank {};", r);
    auto it = std::find_if(reports.messages.begin(), reports.messages.end(),
                           [&](const std::string& m) { return m.find(me) != std::string::npos; });
    REQUIRE(it != reports.messages.end());
    const std::string& message = *it;
    auto took = reports.times[it - reports.messages.begin()] - issued[r];
    INFO(message);
    REQUIRE(took >= kTimeout / 2);
    REQUIRE(took < 2 * kTimeout);
    REQUIRE(message.find("have not issued") == std::string::npos);  // every rank issued #2, one of them otherwise
    if (r == 1) {
      REQUIRE(message.find("watchdog: gloo broadcast #2 (40 bytes, group of 3) stuck for ") == 0);
      REQUIRE(message.find("; ranks that issued a different collective: rank 0 issued #2 as all_reduce (4000 bytes), "
                           "rank 2 issued #2 as all_reduce (4000 bytes)") != std::string::npos);
    } else {
      REQUIRE(message.find("watchdog: gloo all_reduce #2 (4000 bytes, group of 3) stuck for ") == 0);
      REQUIRE(message.find("; ranks that issued a different collective: rank 1 issued #2 as broadcast (40 bytes)") !=
              std::string::npos);
    }
  }
}
