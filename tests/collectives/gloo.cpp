// The Gloo communicator, with every rank a thread of this process over one
// MemoryStore (as Gloo's own tests do): every op and reduction against a
// plain reference for world sizes 1..4 and counts that include 0; issue
// order, overlap, split, send/recv, argument checks and timeouts that name
// the missing rank without hanging.
//
// Catch's assertions are not thread-safe, so rank threads check with
// RANK_CHECK, which throws; run_ranks rethrows the first failure on the test's
// thread.
#include <atomic>
#include <chrono>
#include <future>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

#include "collectives/communicator.h"
#include "collectives/nccl_communicator.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::collectives;
using namespace tandem::testing;
using Clock = std::chrono::steady_clock;

namespace {

constexpr Millis kWait{10000};  // generous: only a broken build waits this long
const std::vector<int64_t> kCounts = {0, 1, 7, 1000, 100003};

#define RANK_CHECK(cond, ...)                                                                       \
  do {                                                                                              \
    if (!(cond)) throw std::runtime_error(fmt::format("{}:{}: {} failed: {}", __FILE__, __LINE__, #cond, \
                                                      fmt::format(__VA_ARGS__)));                   \
  } while (0)

CommOptions quick_options(Millis timeout = Millis(5000)) {
  CommOptions o;
  o.timeout = timeout;
  return o;
}

// Runs fn(comm) for every rank of a world of `size` on its own thread; throws
// with every failing rank's message.
template <typename F>
void run_ranks(int size, F fn, CommOptions options = quick_options()) {
  std::shared_ptr<Store> store = make_memory_store();
  std::vector<std::exception_ptr> errors(size);
  std::vector<std::thread> threads;
  for (int r = 0; r < size; r++) {
    threads.emplace_back([&, r] {
      try {
        std::shared_ptr<Communicator> comm = make_gloo_communicator(store, r, size, options);
        fn(*comm);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  std::string failures;  // every rank's: the first to fail is often not rank 0
  for (int r = 0; r < size; r++) {
    if (!errors[r]) continue;
    try {
      std::rethrow_exception(errors[r]);
    } catch (const std::exception& e) {
      failures += fmt::format("\nrank {}: {}", r, e.what());
    }
  }
  if (!failures.empty()) throw std::runtime_error("ranks failed:" + failures);
}

Millis since(Clock::time_point start) { return std::chrono::duration_cast<Millis>(Clock::now() - start); }

// Rank r's input for a test drawn from `seed`: the same on every rank that computes it.
std::vector<float> input_f32(uint64_t seed, int r, int64_t n) { return random_vector(n, seed * 131 + r); }
std::vector<int32_t> input_i32(uint64_t seed, int r, int64_t n) {
  std::vector<int32_t> v(n);
  std::mt19937_64 gen(seed * 137 + r);
  for (auto& x : v) x = static_cast<int32_t>(gen() % 2001) - 1000;
  return v;
}

// The reduction of every rank's inputs, in float64 (int64 for i32).
template <typename T>
std::vector<double> reference(const std::vector<std::vector<T>>& inputs, ReduceOp op) {
  std::vector<double> out(inputs[0].size());
  for (size_t i = 0; i < out.size(); i++) {
    double acc = op == ReduceOp::max ? -1e300 : 0;
    for (const auto& in : inputs) acc = op == ReduceOp::max ? std::max(acc, double(in[i])) : acc + in[i];
    if (op == ReduceOp::avg) acc = std::is_integral_v<T> ? double(int64_t(acc) / int64_t(inputs.size())) : acc / inputs.size();
    out[i] = acc;
  }
  return out;
}

// sum |x| over the ranks, per element: the scale a float sum is accurate to.
std::vector<double> magnitude(const std::vector<std::vector<float>>& inputs) {
  std::vector<double> out(inputs[0].size(), 0);
  for (const auto& in : inputs)
    for (size_t i = 0; i < out.size(); i++) out[i] += std::fabs(in[i]);
  return out;
}

template <typename T>
double worst_error(const std::vector<T>& got, const std::vector<double>& want, const std::vector<double>& scale) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); i++) {
    double e = std::fabs(double(got[i]) - want[i]) / (scale[i] + 1e-30);
    if (std::isnan(e)) return e;
    worst = std::max(worst, e);
  }
  return worst;
}

const ReduceOp kOps[] = {ReduceOp::sum, ReduceOp::avg, ReduceOp::max};
const char* op_label(ReduceOp op) { return op == ReduceOp::sum ? "sum" : op == ReduceOp::avg ? "avg" : "max"; }

Buffer buf_of(std::vector<float>& v) { return {v.data(), int64_t(v.size()), DType::f32, Device::cpu()}; }
Buffer buf_of(std::vector<int32_t>& v) { return {v.data(), int64_t(v.size()), DType::i32, Device::cpu()}; }
Buffer buf_of(std::vector<uint16_t>& v) { return {v.data(), int64_t(v.size()), DType::bf16, Device::cpu()}; }

void check_all_reduce(Communicator& comm, uint64_t seed, int64_t n) {
  int size = comm.size(), me = comm.rank();
  std::vector<std::vector<float>> f(size);
  std::vector<std::vector<int32_t>> i(size);
  for (int r = 0; r < size; r++) f[r] = input_f32(seed, r, n), i[r] = input_i32(seed, r, n);
  for (ReduceOp op : kOps) {
    std::vector<float> got = f[me];
    comm.all_reduce(buf_of(got), op)->wait(kWait);
    double err = worst_error(got, reference(f, op), magnitude(f));
    RANK_CHECK(err <= 1e-6, "f32 all_reduce {} of {} on {} ranks: error {}", op_label(op), n, size, err);

    std::vector<int32_t> goti = i[me];
    comm.all_reduce(buf_of(goti), op)->wait(kWait);
    std::vector<double> want = reference(i, op);
    for (int64_t k = 0; k < n; k++) RANK_CHECK(goti[k] == want[k], "i32 all_reduce {} at {}", op_label(op), k);

    // bf16: inputs a bf16 tensor can hold; the result is the exact one rounded once (an ulp of slack).
    std::vector<std::vector<float>> fb(size);
    for (int r = 0; r < size; r++) fb[r] = rounded_to_bf16(f[r]);
    std::vector<uint16_t> gotb(n);
    for (int64_t k = 0; k < n; k++) gotb[k] = f32_to_bf16(fb[me][k]);
    comm.all_reduce(buf_of(gotb), op)->wait(kWait);
    std::vector<float> back(n);
    for (int64_t k = 0; k < n; k++) back[k] = bf16_to_f32(gotb[k]);
    err = worst_error(back, reference(fb, op), magnitude(fb));
    RANK_CHECK(err <= 1.0 / 128, "bf16 all_reduce {} of {}: error {}", op_label(op), n, err);
  }
}

void check_reduce_scatter(Communicator& comm, uint64_t seed, int64_t n) {
  int size = comm.size(), me = comm.rank();
  std::vector<std::vector<float>> f(size);
  std::vector<std::vector<int32_t>> i(size);
  for (int r = 0; r < size; r++) f[r] = input_f32(seed, r, n * size), i[r] = input_i32(seed, r, n * size);
  for (ReduceOp op : kOps) {
    std::vector<float> out(n, -7.f);
    comm.reduce_scatter(buf_of(out), buf_of(f[me]), op)->wait(kWait);
    std::vector<double> want = reference(f, op), scale = magnitude(f);
    want = {want.begin() + me * n, want.begin() + (me + 1) * n};
    scale = {scale.begin() + me * n, scale.begin() + (me + 1) * n};
    double err = worst_error(out, want, scale);
    RANK_CHECK(err <= 1e-6, "f32 reduce_scatter {} of {}: error {}", op_label(op), n, err);

    std::vector<std::vector<float>> fb(size);  // bf16 widens to f32 like all_reduce: one rounding
    for (int r = 0; r < size; r++) fb[r] = rounded_to_bf16(f[r]);
    std::vector<uint16_t> inb(n * size), outb(n);
    for (int64_t k = 0; k < n * size; k++) inb[k] = f32_to_bf16(fb[me][k]);
    comm.reduce_scatter(buf_of(outb), buf_of(inb), op)->wait(kWait);
    std::vector<float> back(n);
    for (int64_t k = 0; k < n; k++) back[k] = bf16_to_f32(outb[k]);
    std::vector<double> wantb = reference(fb, op), scaleb = magnitude(fb);
    wantb = {wantb.begin() + me * n, wantb.begin() + (me + 1) * n};
    scaleb = {scaleb.begin() + me * n, scaleb.begin() + (me + 1) * n};
    err = worst_error(back, wantb, scaleb);
    RANK_CHECK(err <= 1.0 / 128, "bf16 reduce_scatter {} of {}: error {}", op_label(op), n, err);

    std::vector<int32_t> outi(n, -7);
    comm.reduce_scatter(buf_of(outi), buf_of(i[me]), op)->wait(kWait);
    std::vector<double> wanti = reference(i, op);
    for (int64_t k = 0; k < n; k++)
      RANK_CHECK(outi[k] == wanti[me * n + k], "i32 reduce_scatter {} at {}", op_label(op), k);
  }
}

void check_byte_moves(Communicator& comm, uint64_t seed, int64_t n) {
  int size = comm.size(), me = comm.rank();
  for (int root = 0; root < size; root++) {
    std::vector<float> b = input_f32(seed, me, n), want = input_f32(seed, root, n);
    comm.broadcast(buf_of(b), root)->wait(kWait);
    RANK_CHECK(b == want, "f32 broadcast of {} from {}", n, root);
  }
  std::vector<int32_t> bi = input_i32(seed, me, n);
  comm.broadcast(buf_of(bi), size - 1)->wait(kWait);
  RANK_CHECK(bi == input_i32(seed, size - 1, n), "i32 broadcast of {}", n);

  std::vector<float> mine = input_f32(seed, me, n), gathered(n * size, -7.f), want;
  for (int r = 0; r < size; r++) {
    std::vector<float> x = input_f32(seed, r, n);
    want.insert(want.end(), x.begin(), x.end());
  }
  comm.all_gather(buf_of(gathered), buf_of(mine))->wait(kWait);
  RANK_CHECK(gathered == want, "f32 all_gather of {}", n);

  std::vector<float> in_place(n * size, -7.f);  // the input is this rank's block of the output
  std::copy(mine.begin(), mine.end(), in_place.begin() + me * n);
  Buffer block{in_place.data() + me * n, n, DType::f32, Device::cpu()};
  comm.all_gather(buf_of(in_place), block)->wait(kWait);
  RANK_CHECK(in_place == want, "in-place f32 all_gather of {}", n);

  std::vector<int32_t> gi(n * size);
  comm.all_gather(buf_of(gi), buf_of(bi))->wait(kWait);
  for (int64_t k = 0; k < n * size; k++) RANK_CHECK(gi[k] == bi[k % std::max<int64_t>(n, 1)], "i32 all_gather at {}", k);

  std::vector<uint16_t> hb(n), gb(n * size);
  for (int64_t k = 0; k < n; k++) hb[k] = f32_to_bf16(mine[k]);
  comm.all_gather(buf_of(gb), buf_of(hb))->wait(kWait);
  for (int64_t k = 0; k < n * size; k++) RANK_CHECK(gb[k] == f32_to_bf16(want[k]), "bf16 all_gather at {}", k);
}

}  // namespace

TEST_CASE("gloo collectives match a reference for every op, world size and count", "[gloo]") {
  uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  for (int size = 1; size <= 4; size++) {
    INFO("world size " << size);
    run_ranks(size, [&](Communicator& comm) {
      RANK_CHECK(comm.size() == size && std::string(comm.backend()) == "gloo", "group shape");
      for (int64_t n : kCounts) {
        check_all_reduce(comm, seed, n);
        check_reduce_scatter(comm, seed, n);
        check_byte_moves(comm, seed, n);
        comm.barrier()->wait(kWait);
      }
    });
  }
}

TEST_CASE("gloo runs operations in issue order while several are in flight", "[gloo]") {
  run_ranks(3, [](Communicator& comm) {
    int me = comm.rank();
    std::vector<float> a(1000, float(me + 1)), gathered(3000), b(10, float(me * 10));
    std::vector<int32_t> none;
    std::vector<std::shared_ptr<Work>> works = {
        comm.all_reduce(buf_of(a), ReduceOp::sum),     // 1 + 2 + 3 = 6
        comm.all_reduce(buf_of(none), ReduceOp::sum),  // count 0: completes in its turn
        comm.all_reduce(buf_of(a), ReduceOp::sum),     // 18: only if it runs after the first
        comm.all_gather(buf_of(gathered), buf_of(a)),  // sees 18 only in order
        comm.broadcast(buf_of(b), 2),
        comm.barrier(),
        comm.all_reduce(buf_of(a), ReduceOp::max)};
    for (auto it = works.rbegin(); it != works.rend(); ++it) (*it)->wait(kWait);
    for (auto& w : works) RANK_CHECK(w->completed(), "completed after wait");
    RANK_CHECK(a == std::vector<float>(1000, 18.f), "a = {}", a[0]);
    RANK_CHECK(gathered == std::vector<float>(3000, 18.f), "gathered = {}", gathered[0]);
    RANK_CHECK(b == std::vector<float>(10, 20.f), "b = {}", b[0]);
  });
}

TEST_CASE("a gloo call returns at once and the transfer overlaps the caller", "[gloo]") {
  run_ranks(2, [](Communicator& comm) {
    std::vector<float> x(1 << 20, 1.f);
    if (comm.rank() == 1) std::this_thread::sleep_for(Millis(200));  // rank 0's all_reduce cannot finish before
    Clock::time_point start = Clock::now();
    std::shared_ptr<Work> work = comm.all_reduce(buf_of(x), ReduceOp::sum);
    Millis issue = since(start);
    bool done_at_issue = work->completed();
    work->wait(kWait);
    Millis total = since(start);
    if (comm.rank() == 0) {
      RANK_CHECK(issue < Millis(50), "issuing took {} ms", issue.count());
      RANK_CHECK(!done_at_issue, "completed right after issue");
      RANK_CHECK(total >= Millis(100), "finished after {} ms, before rank 1 issued", total.count());
    }
    RANK_CHECK(work->completed(), "completed after wait");
    RANK_CHECK(x == std::vector<float>(1 << 20, 2.f), "x = {}", x[0]);
  });
}

TEST_CASE("gloo split forms sub-groups ordered by (key, rank), repeatedly", "[gloo]") {
  run_ranks(4, [](Communicator& comm) {
    int me = comm.rank();
    // Colors by parity, keys reversed: group 0 = {2, 0}, group 1 = {3, 1}.
    std::shared_ptr<Communicator> sub = comm.split(me % 2, -me);
    RANK_CHECK(sub && sub->size() == 2 && sub->rank() == (me < 2 ? 1 : 0), "sub rank {}", sub ? sub->rank() : -1);
    std::vector<float> x(7, float(me));
    sub->all_reduce(buf_of(x), ReduceOp::sum)->wait(kWait);
    RANK_CHECK(x == std::vector<float>(7, me % 2 == 0 ? 2.f : 4.f), "x = {}", x[0]);

    std::shared_ptr<Communicator> all = comm.split(0, me);  // a second split never meets the first's keys
    std::vector<int32_t> y(3, me);
    all->all_reduce(buf_of(y), ReduceOp::sum)->wait(kWait);
    RANK_CHECK(all->size() == 4 && all->rank() == me && y == std::vector<int32_t>(3, 6), "y = {}", y[0]);

    std::shared_ptr<Communicator> some = comm.split(me == 3 ? -1 : 7, 0);  // a negative color joins nothing
    RANK_CHECK((me == 3) == (some == nullptr), "negative color");
    if (some) {
      std::vector<float> z(5, 1.f);
      some->all_reduce(buf_of(z), ReduceOp::sum)->wait(kWait);
      RANK_CHECK(z == std::vector<float>(5, 3.f), "z = {}", z[0]);
      std::shared_ptr<Communicator> nested = some->split(some->rank() == 0 ? 0 : 1, 0);
      RANK_CHECK(nested->size() == (some->rank() == 0 ? 1 : 2), "nested size {}", nested->size());
      nested->barrier()->wait(kWait);
    }
  });
}

TEST_CASE("gloo send/recv pass messages around a ring in order", "[gloo]") {
  for (int size = 2; size <= 4; size++) {
    run_ranks(size, [size](Communicator& comm) {
      int me = comm.rank(), next = (me + 1) % size, prev = (me + size - 1) % size;
      for (int64_t n : kCounts) {
        std::vector<float> out1(n, float(me)), out2(n, float(me + 100)), in1(n, -1.f), in2(n, -1.f);
        // Everyone sends first, twice, then receives: posting never blocks, and the
        // n-th send to a peer meets that peer's n-th recv.
        std::vector<std::shared_ptr<Work>> works = {comm.send(buf_of(out1), next), comm.send(buf_of(out2), next),
                                                    comm.recv(buf_of(in1), prev), comm.recv(buf_of(in2), prev)};
        for (auto& w : works) w->wait(kWait);
        RANK_CHECK(in1 == std::vector<float>(n, float(prev)), "first message of {}", n);
        RANK_CHECK(in2 == std::vector<float>(n, float(prev + 100)), "second message of {}", n);
      }
    });
  }
}

TEST_CASE("gloo rejects bad arguments with a clear message", "[gloo]") {
  run_ranks(1, [](Communicator& comm) {
    std::vector<float> x(8);
    auto fails = [&](auto call, const std::string& text) {
      try {
        call();
      } catch (const Error& e) {
        RANK_CHECK(std::string(e.what()).find(text) != std::string::npos, "message '{}' lacks '{}'", e.what(), text);
        return;
      }
      RANK_CHECK(false, "no error for '{}'", text);
    };
    fails([&] { comm.all_reduce({x.data(), 8, DType::f32, Device::cuda(0)}, ReduceOp::sum); }, "CPU");
    fails([&] { comm.all_reduce({x.data(), 8, DType::u16, Device::cpu()}, ReduceOp::sum); }, "cannot reduce u16");
    fails([&] { comm.broadcast(buf_of(x), 1); }, "root 1");
    fails([&] { comm.all_gather(buf_of(x), Buffer{x.data(), 3, DType::f32, Device::cpu()}); }, "all_gather");
    fails([&] { comm.reduce_scatter(buf_of(x), Buffer{x.data(), 3, DType::f32, Device::cpu()}, ReduceOp::sum); },
          "reduce_scatter");
    fails([&] { comm.send(buf_of(x), 0); }, "itself");
    fails([&] { comm.all_reduce({nullptr, 8, DType::f32, Device::cpu()}, ReduceOp::sum); }, "null");
    comm.all_reduce(buf_of(x), ReduceOp::sum)->wait(kWait);  // still usable after rejected calls
  });
}

TEST_CASE("a gloo wait that runs out names the collective, its seq and the missing rank", "[gloo][timeout]") {
  std::shared_ptr<Store> store = make_memory_store();
  std::promise<void> checked;
  std::shared_future<void> rank0_checked = checked.get_future().share();
  std::exception_ptr error;
  std::string message;
  Millis waited{0}, destroyed{0};
  std::thread rank1([&] {
    try {
      auto comm = make_gloo_communicator(store, 1, 2, quick_options(Millis(1000)));
      comm->barrier()->wait(kWait);  // #1 on both ranks; rank 1 never issues #2
      rank0_checked.wait_for(kWait);
    } catch (...) {
      error = std::current_exception();
    }
  });
  {
    auto comm = make_gloo_communicator(store, 0, 2, quick_options(Millis(1000)));
    comm->barrier()->wait(kWait);
    std::vector<float> x(1000, 1.f);
    std::shared_ptr<Work> work = comm->all_reduce(buf_of(x), ReduceOp::sum);
    Clock::time_point start = Clock::now();
    try {
      work->wait(Millis(500));
    } catch (const CollectiveTimeout& e) {
      message = e.what();
    }
    waited = since(start);
    checked.set_value();
    start = Clock::now();
    comm.reset();  // the comm thread is still inside Gloo's all_reduce: must not hang
    destroyed = since(start);
  }
  rank1.join();
  if (error) std::rethrow_exception(error);
  INFO(message);
  REQUIRE(waited >= Millis(500));
  REQUIRE(waited < Millis(1000));
  REQUIRE(message.find("all_reduce #2") != std::string::npos);
  REQUIRE(message.find("4000 bytes") != std::string::npos);
  REQUIRE(message.find("ranks that have not issued it: rank 1 (last issued #1)") != std::string::npos);
  REQUIRE(destroyed < Millis(2000));
}

TEST_CASE("gloo's own timeout fails the collective, names the rank and poisons the group", "[gloo][timeout]") {
  std::shared_ptr<Store> store = make_memory_store();
  std::promise<void> done;
  std::shared_future<void> rank0_done = done.get_future().share();
  std::thread rank1([&] {
    auto comm = make_gloo_communicator(store, 1, 2, quick_options(Millis(300)));
    rank0_done.wait_for(kWait);  // never issues anything
  });
  std::string first, second;
  Millis waited{0};
  {
    auto comm = make_gloo_communicator(store, 0, 2, quick_options(Millis(300)));
    std::vector<int32_t> x(10, 1);
    Clock::time_point start = Clock::now();
    try {
      comm->all_reduce(buf_of(x), ReduceOp::sum)->wait(kWait);  // released by Gloo's timeout, not this one
    } catch (const CollectiveTimeout& e) {
      first = e.what();
    }
    waited = since(start);
    try {
      comm->barrier()->wait(kWait);
    } catch (const Error& e) {
      second = e.what();
    }
  }
  done.set_value();
  rank1.join();
  INFO(first);
  INFO(second);
  REQUIRE(waited < Millis(600 * 2));
  REQUIRE(first.find("all_reduce #1") != std::string::npos);
  REQUIRE(first.find("rank 1 (last issued #0)") != std::string::npos);
  REQUIRE(second.find("failed earlier") != std::string::npos);
}

TEST_CASE("a gloo rendezvous that a rank never joins names it", "[gloo][timeout]") {
  std::shared_ptr<Store> store = make_memory_store();
  Clock::time_point start = Clock::now();
  std::string message;
  try {
    make_gloo_communicator(store, 0, 3, quick_options(Millis(300)));
  } catch (const CollectiveTimeout& e) {
    message = e.what();
  }
  INFO(message);
  REQUIRE(since(start) < Millis(600));
  REQUIRE(message.find("ranks that have not arrived: 1, 2") != std::string::npos);
}

TEST_CASE("comm_stream of a gloo communicator is the CPU stream; nccl needs a GPU", "[gloo][nccl]") {
  run_ranks(1, [](Communicator& comm) { RANK_CHECK(comm_stream(comm).device().is_cpu(), "gloo comm stream"); });
  if (cuda_device_count() == 0)
    REQUIRE_THROWS_AS(make_nccl_communicator(make_memory_store(), 0, 1, Device::cuda(0), CommOptions()), UserError);
  REQUIRE_THROWS_AS(make_nccl_communicator(make_memory_store(), 0, 1, Device::cpu(), CommOptions()), UserError);
}
