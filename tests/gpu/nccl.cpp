// The NCCL communicator with one rank on cuda:0 (NCCL refuses two ranks of
// one communicator on the same GPU, so multi-rank NCCL runs only in the
// end-to-end tests on multi-GPU machines). With one rank every op is an
// identity, which still exercises init through the store, every NCCL call
// and dtype, the comm stream and its events, and the argument checks.
#include "collectives/communicator.h"
#include "collectives/nccl_communicator.h"
#include "runtime/core/stream.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::collectives;
using namespace tandem::testing;

namespace {

constexpr Millis kWait{20000};

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
