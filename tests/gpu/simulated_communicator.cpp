// The simulated network on CUDA (Note [Simulated network] in
// runtime/parallel/simulated_communicator.h): the delay and scale kernels
// against their CPU twins; the delay runs on the comm stream, so issuing a
// 50 ms operation returns to the host at once; the event-based wait and
// wait_stream; every op's data as a world of identical ranks leaves it;
// follow_stream orders operations after the producer's work; the issue's
// criterion: with all-reduce no longer than backward, a DDP step exposes at
// most 10 % of its all-reduce time; and a traced DDP step, over this network
// and over NCCL with one rank, puts each bucket's all-reduce on the comm
// track where it ran (Note [Comm event times]).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "bench/bench_overlap.h"
#include "kernels/sim_delay.h"
#include "models/mlp/mlp.h"
#include "runtime/parallel/ddp.h"
#include "runtime/parallel/simulated_communicator.h"
#include "runtime/trace.h"
#include "support/identical_ranks.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::collectives;
using namespace tandem::parallel;
using namespace tandem::testing;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

constexpr Millis kWait{20000};  // only a broken build waits this long
const std::vector<int64_t> kCounts = {0, 1, 7, 1031, 100003};
// How far a comm event may lie outside the host times around it: the
// anchor's host time is known to within half a short wait (Note [Comm event
// times]), plus float milliseconds from the anchor.
constexpr double kClockSlackUs = 100;

// One traced DDP step: its host interval (a "step" event on the compute
// track) and the comm events finish() recorded in it.
struct TracedStep {
  double start_us = 0, end_us = 0;
  std::vector<nlohmann::json> comm;
};

// `steps` traced DDP steps of a small MLP over `comm` on `gpu`; `buckets` is
// how many buckets the reducer made.
std::vector<TracedStep> traced_ddp_steps(std::shared_ptr<Communicator> comm, Device gpu, int steps, size_t* buckets) {
  models::Mlp mlp({.in_features = 32, .hidden = {40, 24}, .classes = 10});
  mlp.params.allocate(gpu, DType::f32, 3);
  Context ctx;
  ctx.device = gpu;
  ctx.stream = Stream::create(gpu);
  Tensor x = random_tensor({16, 32}, fresh_seed()).to(gpu);
  std::vector<int32_t> labels(16);
  for (int i = 0; i < 16; i++) labels[i] = i % 10;
  Tensor y = make_int_tensor(labels, {16}, gpu);
  CrossEntropyLoss loss;
  DdpOptions options;
  options.bucket_cap_mb = 0.004;  // several buckets
  options.first_bucket_mb = 0.001;
  options.timeout = kWait;
  Reducer reducer(mlp.params, comm, options);
  *buckets = reducer.buckets().size();
  ctx.grad_ready = [&](const Parameter& p) { reducer.grad_ready(p, ctx.stream); };
  TraceWriter trace(0);
  for (int s = 0; s < steps; s++) {
    ctx.stream.synchronize();
    Clock::time_point start = Clock::now();
    reducer.prepare();
    mlp.params.zero_grads(ctx.stream);
    loss.forward(mlp.net.forward(x, ctx), y, ctx);
    mlp.net.backward(loss.backward(ctx), ctx);
    reducer.finish(ctx.stream, &trace);  // synchronizes: the step has ended
    trace.complete("step", "step", TraceWriter::Track::compute, start, Clock::now());
  }
  fs::path path = fs::temp_directory_path() / fmt::format("tandem_gpu_trace_{}.json", fresh_seed());
  trace.write(path.string());
  std::ifstream in(path);
  nlohmann::json events = nlohmann::json::parse(in)["traceEvents"];
  fs::remove(path);
  std::vector<TracedStep> out;
  TracedStep current;
  for (const auto& e : events) {  // in the order recorded: a step's comm events, then the step
    if (e["ph"] != "X") continue;
    if (e["cat"] == "comm") current.comm.push_back(e);
    if (e["cat"] == "step") {
      current.start_us = e["ts"].get<double>();
      current.end_us = current.start_us + e["dur"].get<double>();
      out.push_back(std::move(current));
      current = TracedStep();
    }
  }
  return out;
}

// Every bucket's all-reduce is on the comm track, inside its step, one after
// another (one comm stream), and lasts > 0 (`positive`) or >= 0.
void require_traced_in_order(const std::vector<TracedStep>& steps, int count, size_t buckets, bool positive) {
  REQUIRE(steps.size() == static_cast<size_t>(count));
  for (size_t k = 0; k < steps.size(); k++) {
    std::vector<nlohmann::json> comm = steps[k].comm;
    INFO("step " << k << " [" << steps[k].start_us << ", " << steps[k].end_us << "] us");
    REQUIRE(comm.size() == buckets);
    std::sort(comm.begin(), comm.end(), [](const auto& a, const auto& b) { return a["ts"] < b["ts"]; });
    double previous_end = steps[k].start_us;
    for (const auto& c : comm) {
      double ts = c["ts"].get<double>(), dur = c["dur"].get<double>();
      INFO(c.dump());
      REQUIRE(std::isfinite(ts));
      REQUIRE(std::isfinite(dur));
      REQUIRE(c["tid"] == static_cast<int>(TraceWriter::Track::comm));
      REQUIRE(c["args"]["bytes"].get<int64_t>() > 0);
      if (positive) REQUIRE(dur > 0);
      REQUIRE(dur >= 0);
      REQUIRE(ts >= previous_end - kClockSlackUs);
      REQUIRE(ts + dur <= steps[k].end_us + kClockSlackUs);
      previous_end = ts + dur;
    }
  }
}


// Loads the kernels (lazy module loading makes a first launch slow) so
// that timed issues measure only the issue.
void warm_up(Communicator& comm, Device gpu) {
  Tensor t = Tensor::zeros({4}, DType::f32, gpu);
  comm.all_reduce(Buffer::of(t), ReduceOp::sum)->wait(kWait);
  Tensor whole = Tensor::zeros({4 * static_cast<int64_t>(comm.size())}, DType::f32, gpu);
  comm.all_gather(Buffer::of(whole), Buffer::of(t))->wait(kWait);
}

}  // namespace

TEST_CASE("cuda scale and copy_bytes match the cpu twins", "[gpu][sim_delay]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  for (DType dtype : {DType::f32, DType::bf16, DType::i32}) {
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{1000}, int64_t{1 << 20} + 3}) {
      for (int64_t factor : {2, 3, 8}) {
        uint64_t seed = fresh_seed();
        INFO(dtype_name(dtype) << " n=" << n << " factor=" << factor << " seed=" << seed);
        std::vector<float> v = values_for(n, seed, dtype);
        Tensor host = make_values(v, dtype, Device::cpu());
        kernels::scale(host.data(), n, dtype, factor, Stream());
        Tensor dev = make_values(v, dtype, gpu);
        kernels::scale(dev.data(), n, dtype, factor, stream);
        stream.synchronize();
        std::vector<float> got = read_values(dev);
        REQUIRE(all_finite(got));
        REQUIRE(got == read_values(host));  // one fp32 multiply and one rounding on both
      }
    }
  }
  std::vector<float> v = random_vector(1000, fresh_seed());
  Tensor a = make_values(v, DType::f32, gpu), b = Tensor::zeros({1000}, DType::f32, gpu);
  kernels::copy_bytes(b.data(), a.data(), a.nbytes(), stream);
  stream.synchronize();
  REQUIRE(b.to_vector() == v);
}

TEST_CASE("cuda sim_delay busies its stream, not the host", "[gpu][sim_delay]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  kernels::sim_delay(1000, stream);  // load the kernel
  stream.synchronize();
  Clock::time_point start = Clock::now();
  kernels::sim_delay(50'000'000, stream);
  double issue_ms = ms_since(start);
  stream.synchronize();
  double took = ms_since(start);
  INFO("issue " << issue_ms << " ms, delay " << took << " ms");
  REQUIRE(issue_ms < 1.0);
  REQUIRE(took >= 45.0);
  REQUIRE(took <= 150.0);
}

TEST_CASE("simulated cuda ops run on the comm stream: issue returns at once, waits poll an event", "[gpu][simulated]") {
  Device gpu = Device::cuda(0);
  SimulatedNetwork net{.gbytes_per_s = 0.1, .latency_us = 0};  // over 2 ranks: 5 MB in 50 ms
  std::shared_ptr<Communicator> comm = make_simulated_communicator(2, gpu, net);
  Stream comm_stream = simulated_comm_stream(*comm);
  REQUIRE(comm_stream.device() == gpu);
  REQUIRE(comm_stream.cuda() != nullptr);  // its own stream, not the legacy one
  warm_up(*comm, gpu);

  const int64_t n = 1'250'000;  // 5 MB of f32
  std::vector<float> v = random_vector(n, fresh_seed());
  Tensor t = make_values(v, DType::f32, gpu);
  double model_ms = simulated_duration_ns(net, SimulatedOp::all_reduce, t.nbytes(), 2) / 1e6;
  REQUIRE(model_ms == Approx(50.0));
  Clock::time_point start = Clock::now();
  std::shared_ptr<Work> work = comm->all_reduce(Buffer::of(t), ReduceOp::sum);
  double issue_ms = ms_since(start);
  INFO("issue " << issue_ms << " ms");
  REQUIRE(issue_ms < 1.0);
  REQUIRE(!work->completed());
  REQUIRE_THROWS_AS(work->wait(Millis(5)), CollectiveTimeout);
  work->wait(kWait);
  double took = ms_since(start);
  INFO("took " << took << " ms for a " << model_ms << " ms op");
  REQUIRE(took >= 0.9 * model_ms);
  REQUIRE(took <= 3 * model_ms);
  REQUIRE(read_values(t) == times(v, 2, DType::f32));

  // wait_stream: the consumer waits on the device, the host does not.
  Stream consumer = Stream::create(gpu);
  Tensor u = make_values(v, DType::f32, gpu);
  std::shared_ptr<Work> second = comm->all_reduce(Buffer::of(u), ReduceOp::sum);
  start = Clock::now();
  second->wait_stream(consumer, kWait);
  REQUIRE(ms_since(start) < 1.0);
  Tensor back = Tensor::zeros({n}, DType::f32, Device::cpu());
  back.copy_from(u, consumer);  // ordered after the all-reduce on the consumer stream
  REQUIRE(second->completed());
  REQUIRE(back.to_vector() == times(v, 2, DType::f32));

  Tensor host = Tensor::zeros({4}, DType::f32, Device::cpu());
  REQUIRE_THROWS(comm->all_reduce(Buffer::of(host), ReduceOp::sum));  // buffers on the communicator's device
}

TEST_CASE("simulated cuda ops complete in issue order", "[gpu][simulated]") {
  Device gpu = Device::cuda(0);
  SimulatedNetwork net{.gbytes_per_s = 0.1, .latency_us = 0};
  std::shared_ptr<Communicator> comm = make_simulated_communicator(2, gpu, net);
  warm_up(*comm, gpu);
  Tensor big = Tensor::zeros({1 << 18}, DType::f32, gpu), small = Tensor::zeros({1 << 10}, DType::f32, gpu);
  double model = (2 * simulated_duration_ns(net, SimulatedOp::all_reduce, big.nbytes(), 2) +
                  simulated_duration_ns(net, SimulatedOp::all_reduce, small.nbytes(), 2)) / 1e6;
  Clock::time_point start = Clock::now();
  std::vector<std::shared_ptr<Work>> works = {comm->all_reduce(Buffer::of(big), ReduceOp::avg),
                                              comm->all_reduce(Buffer::of(small), ReduceOp::avg),
                                              comm->all_reduce(Buffer::of(big), ReduceOp::avg)};
  for (size_t i = 0; i < works.size(); i++) {
    works[i]->wait(kWait);
    for (size_t j = 0; j < i; j++) REQUIRE(works[j]->completed());
  }
  double took = ms_since(start);
  INFO("took " << took << " ms for " << model << " ms of link time");
  REQUIRE(took >= 0.9 * model);
  REQUIRE(took <= 3 * model);
}

TEST_CASE("simulated cuda ops leave what a world of identical ranks would", "[gpu][simulated]") {
  Device gpu = Device::cuda(0);
  SimulatedNetwork fast{.gbytes_per_s = 1000, .latency_us = 0};
  for (int world : {1, 2, 3, 8}) {
    std::shared_ptr<Communicator> comm = make_simulated_communicator(world, gpu, fast);
    for (DType dtype : {DType::f32, DType::bf16, DType::i32}) {
      for (int64_t n : kCounts) {
        uint64_t seed = fresh_seed();
        INFO("world=" << world << " " << dtype_name(dtype) << " n=" << n << " seed=" << seed);
        std::vector<float> v = values_for(n, seed, dtype);
        for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
          INFO("op " << static_cast<int>(op));  // sum, avg, max
          std::vector<float> want = op == ReduceOp::sum ? times(v, world, dtype) : v;
          Tensor t = make_values(v, dtype, gpu);
          comm->all_reduce(Buffer::of(t), op)->wait(kWait);
          REQUIRE(read_values(t) == want);
          Tensor in = make_values(repeated(v, world), dtype, gpu), out = make_values(std::vector<float>(n, 0.f), dtype, gpu);
          comm->reduce_scatter(Buffer::of(out), Buffer::of(in), op)->wait(kWait);
          REQUIRE(read_values(out) == want);
          comm->reduce_scatter(Buffer::of(in.view(0, {n})), Buffer::of(in), op)->wait(kWait);  // in place
          REQUIRE(read_values(in.view(0, {n})) == want);
        }
        Tensor b = make_values(v, dtype, gpu);
        comm->broadcast(Buffer::of(b), world - 1)->wait(kWait);
        REQUIRE(read_values(b) == v);

        Tensor part = make_values(v, dtype, gpu), whole = make_values(std::vector<float>(n * world, -7.f), dtype, gpu);
        comm->all_gather(Buffer::of(whole), Buffer::of(part))->wait(kWait);
        REQUIRE(read_values(whole) == repeated(v, world));
        std::vector<float> first = std::vector<float>(n * world, -7.f);
        std::copy(v.begin(), v.end(), first.begin());
        Tensor inplace = make_values(first, dtype, gpu);
        comm->all_gather(Buffer::of(inplace), Buffer::of(inplace.view(0, {n})))->wait(kWait);
        REQUIRE(read_values(inplace) == repeated(v, world));
      }
    }
    comm->barrier()->wait(kWait);
  }
}

TEST_CASE("follow_stream orders simulated ops after the producer's work", "[gpu][simulated]") {
  Device gpu = Device::cuda(0);
  std::shared_ptr<Communicator> comm = make_simulated_communicator(2, gpu, {.gbytes_per_s = 1000, .latency_us = 0});
  Stream compute = Stream::create(gpu);
  follow_stream(*comm, compute);  // Note [Simulated comm stream]
  const int64_t n = 100003;
  std::vector<float> v = random_vector(n, fresh_seed());
  Tensor src = make_values(v, DType::f32, gpu), t = Tensor::zeros({n}, DType::f32, gpu);
  kernels::sim_delay(20'000'000, compute);  // a slow producer...
  t.copy_from(src, compute);                // ...writes the buffer 20 ms from now
  comm->all_reduce(Buffer::of(t), ReduceOp::sum)->wait(kWait);
  REQUIRE(t.to_vector() == times(v, 2, DType::f32));  // not 2 * 0 overwritten by v
}

TEST_CASE("a DDP step over the simulated cuda network averages identical gradients to themselves", "[gpu][simulated]") {
  Device gpu = Device::cuda(0);
  models::Mlp mlp({.in_features = 32, .hidden = {40, 24}, .classes = 10});
  mlp.params.allocate(gpu, DType::f32, 3);
  Context ctx;
  ctx.device = gpu;
  ctx.stream = Stream::create(gpu);
  Tensor x = random_tensor({16, 32}, fresh_seed()).to(gpu);
  std::vector<int32_t> labels(16);
  for (int i = 0; i < 16; i++) labels[i] = i % 10;
  Tensor y = make_int_tensor(labels, {16}, gpu);
  CrossEntropyLoss loss;
  auto backward = [&] {
    mlp.params.zero_grads(ctx.stream);
    loss.forward(mlp.net.forward(x, ctx), y, ctx);
    mlp.net.backward(loss.backward(ctx), ctx);
  };
  backward();
  ctx.stream.synchronize();
  std::vector<float> alone = mlp.params.grads().to_vector();

  auto comm = make_simulated_communicator(4, gpu, {.gbytes_per_s = 1, .latency_us = 100});
  follow_stream(*comm, ctx.stream);
  DdpOptions options;
  options.bucket_cap_mb = 0.004;
  options.first_bucket_mb = 0.001;
  options.timeout = kWait;
  Reducer reducer(mlp.params, comm, options);
  ctx.grad_ready = [&](const Parameter& p) { reducer.grad_ready(p, ctx.stream); };
  reducer.prepare();
  backward();
  reducer.finish(ctx.stream);
  ctx.stream.synchronize();
  REQUIRE(mlp.params.grads().to_vector() == alone);
}

TEST_CASE("with the simulated network, exposed communication is at most 10% of all-reduce", "[gpu][simulated][ddp]") {
  Device gpu = Device::cuda(0);
  bench::OverlapOptions o;
  o.simulated = true;
  o.steps = 3;
  o.timeout = kWait;
  o = bench::resolve_overlap_options(o, gpu);  // the benchmark's GPU defaults: all-reduce = 0.8 x backward
  bool met = false;
  for (int attempt = 0; attempt < 2 && !met; attempt++) {
    bench::OverlapReport r = bench::run_overlap_bench(nullptr, gpu, o);
    const bench::OverlapStep& m = r.median;
    INFO("backward " << m.backward_ms << " ms, all-reduce " << m.allreduce_ms << " ms, exposed " << m.exposed_ms
                     << " ms (" << m.exposed_pct() << " %) at " << r.gbps << " GB/s over " << r.buckets << " buckets");
    REQUIRE(std::isfinite(m.exposed_ms));
    REQUIRE(m.allreduce_ms > 0);
    met = m.allreduce_ms <= m.backward_ms && m.exposed_pct() <= 10.0;
    if (!met) WARN("attempt " << attempt + 1 << " missed: all-reduce " << m.allreduce_ms << " ms, backward "
                              << m.backward_ms << " ms, exposed " << m.exposed_pct() << " %");
  }
  REQUIRE(met);
}

TEST_CASE("a traced DDP step over the simulated cuda network shows each bucket where the link ran it", "[gpu][simulated][ddp]") {
  Device gpu = Device::cuda(0);
  auto comm = make_simulated_communicator(4, gpu, {.gbytes_per_s = 1, .latency_us = 100});
  size_t buckets = 0;
  std::vector<TracedStep> steps = traced_ddp_steps(comm, gpu, 3, &buckets);
  REQUIRE(buckets >= 3);
  require_traced_in_order(steps, 3, buckets, /*positive=*/true);
  for (const auto& c : steps[0].comm) REQUIRE(c["dur"].get<double>() >= 100 - 1);  // at least the latency
}

TEST_CASE("a traced DDP step over NCCL with one rank shows each bucket's all-reduce in order", "[gpu][nccl][ddp]") {
  Device gpu = Device::cuda(0);
  CommOptions options;
  options.timeout = kWait;
  auto comm = make_nccl_communicator(make_memory_store(), 0, 1, gpu, options);
  size_t buckets = 0;
  std::vector<TracedStep> steps = traced_ddp_steps(comm, gpu, 3, &buckets);
  // One rank: an in-place all-reduce may move nothing, so it may last 0.
  require_traced_in_order(steps, 3, buckets, /*positive=*/false);
}
