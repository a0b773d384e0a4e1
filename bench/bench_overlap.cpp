#include "bench/bench_overlap.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <random>

#include "models/mlp/mlp.h"
#include "runtime/core/error.h"
#include "runtime/parallel/ddp.h"
#include "runtime/parallel/process_group.h"
#include "runtime/parallel/simulated_communicator.h"

namespace tandem::bench {

namespace {

using Clock = std::chrono::steady_clock;
using collectives::Buffer;
using collectives::Communicator;
using collectives::ReduceOp;

constexpr int64_t kClasses = 10;
constexpr int kCalibrationRuns = 3;  // backward runs whose median sets the simulated bandwidth
constexpr double kMiB = 1024.0 * 1024.0;
constexpr double kExposedTargetPct = 10;  // the criterion, printed as a verdict

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

// The model, its synthetic batch and the three measurements of a step.
class OverlapRun {
 public:
  OverlapRun(const OverlapOptions& o, Device device)
      : options_(o),
        mlp_({.in_features = o.width, .hidden = std::vector<int64_t>(o.layers, o.width), .classes = kClasses,
              .activation = "relu", .dropout = 0.f}) {
    mlp_.params.allocate(device, DType::f32, 1);
    ctx_.device = device;
    ctx_.stream = Stream::create(device);
    std::mt19937 gen(7);
    std::uniform_real_distribution<float> value(-1.f, 1.f);
    std::vector<float> x(o.batch * o.width);
    for (float& v : x) v = value(gen);
    x_ = Tensor::from_vector(x, {o.batch, o.width});
    Tensor y = Tensor::empty({o.batch}, DType::i32, Device::cpu());
    for (int64_t i = 0; i < o.batch; i++) y.data_as<int32_t>()[i] = static_cast<int32_t>(gen() % kClasses);
    y_ = device.is_cuda() ? y.to(device) : y;
    if (device.is_cuda()) x_ = x_.to(device);
  }

  const ParameterSet& params() const { return mlp_.params; }
  Context& ctx() { return ctx_; }

  // Forward and loss, with fresh gradients; returns d loss / d logits.
  Tensor forward() {
    mlp_.params.zero_grads(ctx_.stream);
    Tensor logits = mlp_.net.forward(x_, ctx_);
    loss_.forward(logits, y_, ctx_);
    return loss_.backward(ctx_);
  }

  // Backward alone, nobody told of the gradients.
  double backward_ms() {
    ctx_.grad_ready = nullptr;
    Tensor dlogits = forward();
    ctx_.stream.synchronize();
    Clock::time_point start = Clock::now();
    mlp_.net.backward(dlogits, ctx_);
    ctx_.stream.synchronize();
    return ms_between(start, Clock::now());
  }

  // The buckets' all-reduces back to back, no compute.
  double allreduce_ms(const parallel::Reducer& reducer, Communicator& comm) {
    if (!parallel::is_simulated(comm)) comm.barrier()->wait(options_.timeout);  // start together
    ctx_.stream.synchronize();
    Clock::time_point start = Clock::now();
    std::vector<std::shared_ptr<collectives::Work>> works;
    for (const parallel::Bucket& b : reducer.buckets())
      works.push_back(comm.all_reduce(Buffer::of(mlp_.params.grads().view(b.begin, {b.end - b.begin})), ReduceOp::avg));
    for (auto& w : works) w->wait(options_.timeout);
    return ms_between(start, Clock::now());
  }

  // One DDP backward: buckets all-reduced as backward fills them. Returns
  // (exposed ms, backward + exposed ms); see the header for why the host
  // synchronizes the compute stream around finish().
  std::pair<double, double> ddp_ms(parallel::Reducer& reducer, Communicator& comm) {
    if (!parallel::is_simulated(comm)) comm.barrier()->wait(options_.timeout);
    ctx_.grad_ready = [&](const Parameter& p) { reducer.grad_ready(p, ctx_.stream); };
    Tensor dlogits = forward();
    reducer.prepare();
    ctx_.stream.synchronize();
    Clock::time_point start = Clock::now();
    mlp_.net.backward(dlogits, ctx_);
    ctx_.stream.synchronize();
    Clock::time_point backward_done = Clock::now();
    reducer.finish(ctx_.stream);
    ctx_.stream.synchronize();
    Clock::time_point end = Clock::now();
    ctx_.grad_ready = nullptr;
    return {ms_between(backward_done, end), ms_between(start, end)};
  }

 private:
  OverlapOptions options_;
  models::Mlp mlp_;
  Context ctx_;
  CrossEntropyLoss loss_;
  Tensor x_, y_;
};

parallel::DdpOptions ddp_options(const OverlapOptions& o) {
  parallel::DdpOptions ddp;
  if (o.bucket_mb > 0) {
    ddp.bucket_cap_mb = o.bucket_mb;
    ddp.first_bucket_mb = std::min(1.0, o.bucket_mb);
  } else {
    // One layer per bucket (Note [Overlap bound]). Buckets fill in reverse
    // registration order, bias before weight: the first cap holds the
    // output layer but not the next bias, the others a weight and its bias
    // but not the next bias, so a bucket is complete as soon as its layer's
    // backward is (a bucket that reached into the layer below would wait
    // for that layer too).
    double w = static_cast<double>(o.width), f32 = static_cast<double>(dtype_size(DType::f32));
    ddp.first_bucket_mb = (kClasses * (w + 1) + w / 2) * f32 / kMiB;
    ddp.bucket_cap_mb = (w * w + w + w / 2) * f32 / kMiB;
  }
  ddp.timeout = o.timeout;
  return ddp;
}

// The bandwidth at which the buckets' all-reduces take `comm_fraction` of backward.
double calibrate_gbps(OverlapRun& run, const OverlapOptions& o) {
  for (int i = 0; i < o.warmup; i++) run.backward_ms();
  std::vector<double> runs;
  for (int i = 0; i < kCalibrationRuns; i++) runs.push_back(run.backward_ms());
  double target_ms = o.comm_fraction * median(runs);
  double wire = 0, latency_ms = 0;
  for (const parallel::Bucket& b : parallel::assign_buckets(run.params(), ddp_options(o))) {
    wire += parallel::ring_wire_bytes(parallel::SimulatedOp::all_reduce, b.bytes(DType::f32), o.world);
    latency_ms += o.latency_us / 1e3;
  }
  if (wire == 0) throw UserError("a simulated world of 1 rank moves no bytes; pass --world 2 or more");
  if (target_ms <= 1.1 * latency_ms)
    throw UserError(fmt::format("the buckets' latency alone ({:.3f} ms) exceeds {} of backward ({:.3f} ms); lower "
                                "--latency-us, raise --batch, or give --gbps",
                                latency_ms, o.comm_fraction, target_ms / o.comm_fraction));
  return wire / ((target_ms - latency_ms) * 1e6);  // bytes per ns is GB/s
}

}  // namespace

OverlapOptions resolve_overlap_options(OverlapOptions o, Device device) {
  bool gpu = device.is_cuda();
  if (o.width <= 0) o.width = gpu ? 1024 : 512;
  if (o.layers <= 0) o.layers = gpu ? 24 : 12;
  if (o.batch <= 0) o.batch = gpu ? 4096 : 256;
  if (o.steps < 1) throw UserError("--steps must be at least 1");
  if (o.warmup < 0) throw UserError("--warmup must be >= 0");
  if (o.world < 1) throw UserError(fmt::format("--world must be at least 1, got {}", o.world));
  if (o.gbps < 0) throw UserError(fmt::format("--gbps must be > 0 (or 0 to calibrate), got {}", o.gbps));
  if (!(o.comm_fraction > 0)) throw UserError(fmt::format("--comm-fraction must be > 0, got {}", o.comm_fraction));
  return o;
}

OverlapReport run_overlap_bench(std::shared_ptr<Communicator> comm, Device device, const OverlapOptions& o) {
  OverlapRun run(o, device);
  OverlapReport report;
  report.device = device.str();
  report.width = o.width;
  report.layers = o.layers;
  report.batch = o.batch;
  if (!comm) {
    TANDEM_CHECK(o.simulated, "run_overlap_bench: no communicator for a launched run");
    report.gbps = o.gbps > 0 ? o.gbps : calibrate_gbps(run, o);
    report.latency_us = o.latency_us;
    comm = parallel::make_simulated_communicator(o.world, device, {report.gbps, o.latency_us});
  }
  report.mode = comm->backend();
  report.world_size = comm->size();
  parallel::Reducer reducer(run.params(), comm, ddp_options(o));
  report.buckets = static_cast<int>(reducer.buckets().size());
  report.grad_bytes = static_cast<int64_t>(run.params().grads().nbytes());

  for (int i = 0; i < o.warmup; i++) {
    run.backward_ms();
    run.allreduce_ms(reducer, *comm);
    run.ddp_ms(reducer, *comm);
  }
  std::vector<double> local;  // per step: backward, allreduce, exposed, ddp
  for (int i = 0; i < o.steps; i++) {
    local.push_back(run.backward_ms());
    local.push_back(run.allreduce_ms(reducer, *comm));
    auto [exposed, ddp] = run.ddp_ms(reducer, *comm);
    local.push_back(exposed);
    local.push_back(ddp);
  }
  if (!parallel::is_simulated(*comm) && comm->size() > 1) {  // the slowest rank's numbers
    Tensor t = Tensor::from_vector(std::vector<float>(local.begin(), local.end()), {static_cast<int64_t>(local.size())});
    if (device.is_cuda()) t = t.to(device);
    comm->all_reduce(Buffer::of(t), ReduceOp::max)->wait(o.timeout);
    std::vector<float> slowest = t.to_vector();
    local.assign(slowest.begin(), slowest.end());
  }
  std::vector<double> cols[4];
  for (int i = 0; i < o.steps; i++) {
    OverlapStep s{local[4 * i], local[4 * i + 1], local[4 * i + 2], local[4 * i + 3]};
    report.steps.push_back(s);
    cols[0].push_back(s.backward_ms), cols[1].push_back(s.allreduce_ms);
    cols[2].push_back(s.exposed_ms), cols[3].push_back(s.step_ms);
  }
  report.median = {median(cols[0]), median(cols[1]), median(cols[2]), median(cols[3])};
  return report;
}

void print_overlap_table(const OverlapReport& r) {
  if (r.mode == "simulated")
    fmt::print("# overlap: simulated network, {} ranks, {:.2f} GB/s, {} us latency per op, on {}\n", r.world_size,
               r.gbps, r.latency_us, r.device);
  else
    fmt::print("# overlap: {} ranks over {}, on {}; times are the slowest rank's\n", r.world_size, r.mode, r.device);
  fmt::print("# model: {} x Linear({}, {}) + ReLU, batch {} per rank, f32; {} buckets, {:.1f} MB of gradients\n",
             r.layers, r.width, r.width, r.batch, r.buckets, r.grad_bytes / 1e6);
  fmt::print("{:>6} {:>12} {:>13} {:>11} {:>18} {:>19} {:>9}\n", "step", "backward_ms", "allreduce_ms", "exposed_ms",
             "exposed/allreduce", "allreduce/backward", "ddp_ms");
  auto row = [](const std::string& name, const OverlapStep& s) {
    fmt::print("{:>6} {:>12.3f} {:>13.3f} {:>11.3f} {:>16.1f} % {:>19.2f} {:>9.3f}\n", name, s.backward_ms,
               s.allreduce_ms, s.exposed_ms, s.exposed_pct(), s.comm_to_backward(), s.step_ms);
  };
  for (size_t i = 0; i < r.steps.size(); i++) row(std::to_string(i + 1), r.steps[i]);
  row("median", r.median);
  bool hidden = r.median.allreduce_ms <= r.median.backward_ms;
  fmt::print("# all-reduce {} backward; exposed is {:.1f} % of all-reduce ({} the {:.0f} % target{})\n",
             hidden ? "<=" : ">", r.median.exposed_pct(), r.median.exposed_pct() <= kExposedTargetPct ? "within" : "above",
             kExposedTargetPct, hidden ? "" : ", which assumes all-reduce <= backward");
}

nlohmann::json overlap_json(const OverlapReport& r) {
  auto step_json = [](const OverlapStep& s) {
    return nlohmann::json{{"backward_ms", s.backward_ms}, {"allreduce_ms", s.allreduce_ms},
                          {"exposed_ms", s.exposed_ms}, {"exposed_pct", s.exposed_pct()},
                          {"allreduce_over_backward", s.comm_to_backward()}, {"ddp_ms", s.step_ms}};
  };
  nlohmann::json steps = nlohmann::json::array();
  for (const OverlapStep& s : r.steps) steps.push_back(step_json(s));
  nlohmann::json j = {{"mode", r.mode},           {"device", r.device},   {"world_size", r.world_size},
                      {"width", r.width},         {"layers", r.layers},   {"batch", r.batch},
                      {"buckets", r.buckets},     {"grad_bytes", r.grad_bytes},
                      {"steps", steps},           {"median", step_json(r.median)}};
  if (r.mode == "simulated") j["network"] = {{"gbytes_per_s", r.gbps}, {"latency_us", r.latency_us}};
  return j;
}

void run_overlap_command(const OverlapOptions& options, const std::string& json_out) {
  OverlapReport report;
  if (options.simulated) {
    Device device = options.device.empty() ? (cuda_device_count() > 0 ? Device::cuda(0) : Device::cpu())
                                           : parse_device(options.device);
    if (device.is_cuda()) {
      require_cuda("tandem bench overlap --simulated on a GPU");
      set_current_device(device);
    }
    report = run_overlap_bench(nullptr, device, resolve_overlap_options(options, device));
  } else {
    parallel::WorldEnv world = parallel::read_world_env();
    if (world.world_size == 1)
      throw UserError("bench overlap measures communication between ranks: run it under `tandem launch "
                      "--nproc-per-node 2 -- tandem bench overlap`, or pass --simulated for one process");
    Device device = options.device.empty() ? Device::cpu() : parse_device(options.device);
    if (device.is_cuda()) {
      require_cuda("tandem bench overlap --device cuda");
      device = Device::cuda(world.local_rank % cuda_device_count());
      set_current_device(device);
    }
    OverlapOptions o = resolve_overlap_options(options, device);
    parallel::ProcessGroup pg = parallel::init_process_group(device.is_cuda() ? "nccl" : "gloo", device, o.timeout);
    report = run_overlap_bench(pg.comm, device, o);
    if (pg.rank() != 0) return;
  }
  print_overlap_table(report);
  if (!json_out.empty()) {
    std::ofstream out(json_out);
    out << overlap_json(report).dump(2) << "\n";
    if (!out) throw UserError(fmt::format("cannot write {}", json_out));
  }
}

}  // namespace tandem::bench
