// The NCCL communicator with one rank on cuda:0 (NCCL refuses two ranks of
// one communicator on the same GPU, so multi-rank NCCL runs only in the
// end-to-end tests on multi-GPU machines). With one rank every op is an
// identity, which still exercises init through the store, every NCCL call
// and dtype, the comm stream and its events, groups (with the send to itself
// that only a group allows), the times Works report, and the argument checks.
#include <chrono>
#include <thread>

#include "collectives/communicator.h"
#include "collectives/nccl_communicator.h"
#include "runtime/core/stream.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::collectives;
using namespace tandem::testing;
using Clock = std::chrono::steady_clock;

namespace {

constexpr Millis kWait{20000};
// How far a Work's reported time may lie outside the host times around it:
// the anchor's host time is known to within half a short wait (Note [Comm
// event times]), plus float milliseconds from the anchor.
constexpr std::chrono::microseconds kClockSlack{100};

std::shared_ptr<Communicator> single_rank() {
  CommOptions options;
  options.timeout = Millis(20000);
  return make_nccl_communicator(make_memory_store(), 0, 1, Device::cuda(0), options);
}

}  // namespace

TEST_CASE("nccl with one rank: every op is an identity on every dtype", "[gpu][nccl]") {
  Device gpu = Device::cuda(0);
  std::shared_ptr<Communicator> comm = single_rank();
  REQUIRE(std::string(comm->backend()) == "nccl");
  REQUIRE(comm->size() == 1);
  Stream stream = comm_stream(*comm);
  REQUIRE(stream.device() == gpu);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{100003}}) {
      INFO(dtype_name(dtype) << " n=" << n);
      std::vector<float> values = draw(n, fresh_seed(), dtype);
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
        Tensor t = make_tensor(values, {n}, dtype, gpu);  // written on the legacy stream, synchronously
        comm->all_reduce(Buffer::of(t), op)->wait(kWait);
        REQUIRE(t.to_vector() == values);
      }
      Tensor b = make_tensor(values, {n}, dtype, gpu);
      comm->broadcast(Buffer::of(b), 0)->wait(kWait);
      REQUIRE(b.to_vector() == values);

      Tensor in = make_tensor(values, {n}, dtype, gpu), out = Tensor::zeros({n}, dtype, gpu);
      comm->all_gather(Buffer::of(out), Buffer::of(in))->wait(kWait);
      REQUIRE(out.to_vector() == values);
      Tensor scattered = Tensor::zeros({n}, dtype, gpu);
      comm->reduce_scatter(Buffer::of(scattered), Buffer::of(in), ReduceOp::sum)->wait(kWait);
      REQUIRE(scattered.to_vector() == values);
    }
  }
  std::shared_ptr<Work> barrier = comm->barrier();
  barrier->wait(kWait);
  REQUIRE(barrier->completed());
}

TEST_CASE("nccl runs on its comm stream, ordered by events", "[gpu][nccl]") {
  Device gpu = Device::cuda(0);
  std::shared_ptr<Communicator> comm = single_rank();
  Stream compute = Stream::create(gpu);
  std::vector<float> values = random_vector(1 << 20, fresh_seed());
  Tensor host = Tensor::from_vector(values, {1 << 20});
  Tensor grads = Tensor::zeros({1 << 20}, DType::f32, gpu);
  grads.copy_from(host, compute);  // produced on the compute stream
  Event ready = Event::create(gpu);
  ready.record(compute);
  ready.wait_on(comm_stream(*comm));  // Note [NCCL comm stream]
  std::shared_ptr<Work> work = comm->all_reduce(Buffer::of(grads), ReduceOp::avg);
  work->wait_stream(compute, kWait);  // the consumer waits without blocking the host
  Tensor back = Tensor::zeros({1 << 20}, DType::f32, Device::cpu());
  back.copy_from(grads, compute);
  compute.synchronize();
  REQUIRE(work->completed());
  REQUIRE(back.to_vector() == values);
}

TEST_CASE("nccl splits and rejects bad buffers", "[gpu][nccl]") {
  std::shared_ptr<Communicator> comm = single_rank();
  std::shared_ptr<Communicator> sub = comm->split(3, 0);
  REQUIRE(sub->size() == 1);
  Tensor x = make_tensor({1.f, 2.f, 3.f}, {3}, DType::f32, Device::cuda(0));
  sub->all_reduce(Buffer::of(x), ReduceOp::sum)->wait(kWait);
  REQUIRE(x.to_vector() == std::vector<float>{1.f, 2.f, 3.f});
  REQUIRE(comm->split(-1, 0) == nullptr);

  std::vector<float> host(3);
  REQUIRE_THROWS_WITH(comm->all_reduce({host.data(), 3, DType::f32, Device::cpu()}, ReduceOp::sum),
                      Catch::Contains("device cuda:0"));
  Tensor u = Tensor::zeros({3}, DType::u16, Device::cuda(0));
  REQUIRE_THROWS_WITH(comm->all_reduce(Buffer::of(u), ReduceOp::sum), Catch::Contains("cannot reduce u16"));
  comm->broadcast(Buffer::of(u), 0)->wait(kWait);  // byte moves take any dtype
}

TEST_CASE("nccl groups launch their calls together with a send to itself", "[gpu][nccl]") {
  Device gpu = Device::cuda(0);
  std::shared_ptr<Communicator> comm = single_rank();
  const int64_t n = 100003;
  std::vector<float> a = random_vector(n, fresh_seed()), b = random_vector(7, fresh_seed());
  std::vector<float> c = random_vector(1031, fresh_seed()), sent = random_vector(n, fresh_seed());
  Tensor ta = make_tensor(a, {n}, DType::f32, gpu), tb = make_tensor(b, {7}, DType::bf16, gpu);
  Tensor tc = make_tensor(c, {1031}, DType::f32, gpu);
  Tensor src = make_tensor(sent, {n}, DType::f32, gpu), dst = Tensor::zeros({n}, DType::f32, gpu);
  std::vector<float> b_bf16 = tb.to_vector();
  std::vector<std::shared_ptr<Work>> works;
  {
    CommGroup group(*comm);
    works.push_back(comm->all_reduce(Buffer::of(ta), ReduceOp::sum));
    works.push_back(comm->broadcast(Buffer::of(tb), 0));
    {
      CommGroup nested(*comm);  // only the outermost end launches
      works.push_back(comm->all_reduce(Buffer::of(tc), ReduceOp::max));
    }
    REQUIRE_THROWS_WITH(works[2]->wait(kWait), Catch::Contains("before its group ended"));
    works.push_back(comm->recv(Buffer::of(dst), 0));  // the receive first: a group's order does not matter
    works.push_back(comm->send(Buffer::of(src), 0));
    works.push_back(comm->barrier());
    REQUIRE_THROWS_WITH(works[0]->wait_stream(Stream::create(gpu), kWait), Catch::Contains("before its group ended"));
  }
  for (const auto& w : works) w->wait(kWait);
  REQUIRE(ta.to_vector() == a);
  REQUIRE(tb.to_vector() == b_bf16);
  REQUIRE(tc.to_vector() == c);
  REQUIRE(dst.to_vector() == sent);

  // One launch: every Work of the group reports the group's interval.
  Clock::time_point start, end;
  REQUIRE(works[0]->run_interval(&start, &end));
  REQUIRE(start <= end);
  for (const auto& w : works) {
    Clock::time_point s, e;
    REQUIRE(w->run_interval(&s, &e));
    REQUIRE(s == start);
    REQUIRE(e == end);
  }

  // Outside a group a send to itself would block the stream forever.
  REQUIRE_THROWS_WITH(comm->send(Buffer::of(src), 0), Catch::Contains("only inside a group"));
  // The group is the thread's: another communicator's calls and a split are refused while it is open.
  std::shared_ptr<Communicator> sub = comm->split(1, 0);
  {
    CommGroup group(*comm);
    REQUIRE_THROWS_WITH(sub->all_reduce(Buffer::of(tc), ReduceOp::sum), Catch::Contains("another NCCL communicator"));
    REQUIRE_THROWS_WITH(comm->split(2, 0), Catch::Contains("not inside a group"));
  }
  sub->all_reduce(Buffer::of(tc), ReduceOp::sum)->wait(kWait);  // fine once the group ended
  REQUIRE(tc.to_vector() == c);
}

TEST_CASE("nccl Works report when they ran in host time and issue order", "[gpu][nccl]") {
  Device gpu = Device::cuda(0);
  std::shared_ptr<Communicator> comm = single_rank();
  const int64_t n = 1 << 22;
  Tensor x = Tensor::zeros({n}, DType::f32, gpu), gathered = Tensor::zeros({n}, DType::f32, gpu);
  Clock::time_point before = Clock::now();
  std::vector<std::shared_ptr<Work>> works;
  for (int i = 0; i < 3; i++) {
    works.push_back(comm->all_reduce(Buffer::of(x), ReduceOp::sum));
    works.push_back(comm->all_gather(Buffer::of(gathered), Buffer::of(x)));  // a copy: takes some time
  }
  for (const auto& w : works) w->wait(kWait);
  Clock::time_point after = Clock::now();
  Clock::time_point previous_end = before;
  for (size_t i = 0; i < works.size(); i++) {
    INFO("work " << i);
    Clock::time_point start, end;
    REQUIRE(works[i]->run_interval(&start, &end));
    REQUIRE(start <= end);
    REQUIRE(start >= previous_end - kClockSlack);  // one stream: each starts after the one before ended
    REQUIRE(end <= after + kClockSlack);
    previous_end = end;
  }
  // A long run: times stay exact past the anchor period (anchors chain on the device clock).
  std::this_thread::sleep_for(EventClock::kAnchorPeriod + std::chrono::milliseconds(100));
  comm->barrier()->wait(kWait);  // lets the communicator record its next anchor...
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  before = Clock::now();
  std::shared_ptr<Work> late = comm->all_gather(Buffer::of(gathered), Buffer::of(x));  // ...and time it
  late->wait(kWait);
  after = Clock::now();
  Clock::time_point start, end;
  REQUIRE(late->run_interval(&start, &end));
  REQUIRE(start >= before - kClockSlack);
  REQUIRE(end <= after + kClockSlack);
  REQUIRE(start <= end);
}
