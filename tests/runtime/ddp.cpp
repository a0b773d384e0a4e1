// Data parallelism on the CPU with ranks as threads over Gloo: buckets, the
// equivalence of N ranks with batch B and one rank with batch N*B, gradient
// accumulation, the start-up check that every rank built the same model,
// gradients sent as bf16 or f16, traces, and the buckets finish() issues
// itself (in a group, which the simulated network, like Gloo, has no use
// for).
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <nlohmann/json.hpp>
#include <thread>

#include "models/mlp/mlp.h"
#include "runtime/core/philox.h"
#include "runtime/parallel/ddp.h"
#include "runtime/parallel/simulated_communicator.h"
#include "runtime/safetensors.h"
#include "runtime/trainer.h"
#include "runtime/thread_ranks.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
namespace fs = std::filesystem;

namespace {

collectives::CommOptions comm_options(int seconds) {
  collectives::CommOptions o;
  o.timeout = std::chrono::seconds(seconds);
  return o;
}

TrainConfig small_config(int64_t batch, int64_t accum, int64_t steps) {
  TrainConfig c;
  c.model = "mlp";
  c.batch_size = batch;
  c.grad_accum_steps = accum;
  c.max_steps = steps;
  c.lr = 1e-2;
  c.optimizer = "sgd";
  c.momentum = 0.9;
  c.weight_decay = 1e-4;
  c.grad_clip = 5.0;
  c.log_every = 1;
  c.eval_every = 1000;
  c.bucket_cap_mb = 0.004;  // several buckets even for this small model
  c.comm_timeout = 30;
  c.seed = 7;
  return c;
}

struct RunResult {
  std::vector<double> losses;
  std::map<std::string, std::vector<float>> weights;
};

// Trains on `world` thread-ranks; returns rank 0's logged losses and final weights.
RunResult run_ranks(int world, const TrainConfig& config, const ImageDataset& data, std::vector<int64_t> hidden = {24, 16},
                    const std::string& trace_out = "") {
  fs::path dir = fs::temp_directory_path() / fmt::format("tandem_ddp_{}", fresh_seed());
  for_each_rank(world, [&](const parallel::ProcessGroup& pg) {
    models::Mlp mlp({.in_features = 64, .hidden = hidden, .classes = 10, .activation = "relu", .dropout = 0.1f});
    train_classifier(config, mlp.net, mlp.params, data, data,
                     {.metrics_out = (dir / "metrics.jsonl").string(), .ckpt_dir = (dir / "ckpt").string(),
                      .progress = false, .trace_out = trace_out},
                     pg);
  });

  RunResult result;
  std::ifstream in(dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) {
      result.losses.push_back(j["loss"].get<double>());
      REQUIRE(j["world_size"] == world);
      REQUIRE(j.contains("comm_ms"));
      REQUIRE(j.contains("exposed_comm_ms"));
    }
  }
  auto file = read_safetensors((dir / "ckpt" / fmt::format("step_{:08d}", config.max_steps) / "model.safetensors").string());
  for (auto& [name, t] : file.tensors) result.weights[name] = t.to_vector();
  fs::remove_all(dir);
  return result;
}

void require_same(const RunResult& a, const RunResult& b) {
  REQUIRE(a.losses.size() == b.losses.size());
  for (size_t i = 0; i < a.losses.size(); i++) {
    INFO("step " << i + 1 << ": " << a.losses[i] << " vs " << b.losses[i]);
    REQUIRE(std::fabs(a.losses[i] - b.losses[i]) <= 1e-5 * std::fabs(b.losses[i]));
  }
  REQUIRE(a.weights.size() == b.weights.size());
  for (auto& [name, w] : a.weights) {
    INFO(name);
    REQUIRE(rel_error(w, b.weights.at(name)) <= 1e-5);
  }
}

// `value` rounded to bf16 or f16 and back.
float round_to(float value, DType dtype) { return dtype == DType::bf16 ? round_to_bf16(value) : round_to_f16(value); }

}  // namespace

TEST_CASE("buckets cover the gradients in reverse registration order", "[ddp]") {
  models::Mlp mlp({.in_features = 64, .hidden = {300, 200}, .classes = 10});
  mlp.params.allocate(Device::cpu(), DType::f32, 1);
  parallel::DdpOptions options{.bucket_cap_mb = 0.25, .first_bucket_mb = 0.01, .timeout = std::chrono::seconds(10)};
  auto buckets = parallel::assign_buckets(mlp.params, options);
  REQUIRE(buckets.size() >= 3);
  REQUIRE(buckets.front().params.front()->name == "layers.4.bias");  // the last registered comes first
  int64_t covered_end = mlp.params.numel() + 8;
  size_t count = 0;
  for (size_t i = 0; i < buckets.size(); i++) {
    const auto& b = buckets[i];
    REQUIRE(b.begin < b.end);
    REQUIRE(b.end <= covered_end);  // descending, never overlapping
    covered_end = b.begin;
    count += b.params.size();
    for (const Parameter* p : b.params) REQUIRE((p->offset >= b.begin && p->offset + p->numel() <= b.end));
    // A bucket closes once it holds at least its cap (a single large
    // parameter may exceed it alone).
    if (b.params.size() > 1) {
      double cap = (i == 0 ? options.first_bucket_mb : options.bucket_cap_mb) * 1024 * 1024;
      REQUIRE(b.bytes(DType::f32) - 4.0 * b.params.back()->numel() < cap);
    }
  }
  REQUIRE(covered_end == 0);
  REQUIRE(count == mlp.params.list().size());
}

TEST_CASE("2 and 4 ranks train exactly like one rank with the whole batch", "[ddp]") {
  ImageDataset data = synthetic(640, fresh_seed());
  RunResult one = run_ranks(1, small_config(32, 1, 12), data);
  RunResult two = run_ranks(2, small_config(16, 1, 12), data);
  RunResult four = run_ranks(4, small_config(8, 1, 12), data);
  REQUIRE(one.losses.size() == 12);
  require_same(two, one);
  require_same(four, one);
}

TEST_CASE("gradient accumulation across ranks matches one large batch", "[ddp]") {
  ImageDataset data = synthetic(640, fresh_seed());
  RunResult one = run_ranks(1, small_config(32, 1, 8), data);
  RunResult accum = run_ranks(2, small_config(8, 2, 8), data);  // 2 ranks x 8 x 2 micro-steps = 32
  require_same(accum, one);
}

TEST_CASE("a rank with a different model fails fast, naming the mismatch", "[ddp]") {
  auto store = collectives::make_memory_store();
  std::vector<std::string> messages(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; r++) {
    threads.emplace_back([&, r] {
      models::Mlp mlp({.in_features = 64, .hidden = {r == 0 ? int64_t{24} : int64_t{20}}, .classes = 10});
      auto comm = collectives::make_gloo_communicator(store, r, 2, comm_options(10));
      try {
        parallel::check_same_parameters(mlp.params, DType::f32, *comm, *store, std::chrono::seconds(10));
      } catch (const UserError& e) {
        messages[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const std::string& m : messages) {
    INFO(m);
    REQUIRE(m.find("rank 1") != std::string::npos);
    REQUIRE(m.find("layers.0.weight [24, 64]") != std::string::npos);
  }
}

TEST_CASE("bf16 and f16 gradients on the wire train close to f32 ones", "[ddp]") {
  ImageDataset data = synthetic(640, fresh_seed());
  RunResult exact = run_ranks(2, small_config(16, 1, 12), data);
  std::map<std::string, RunResult> runs;
  std::map<std::string, double> weight_error;  // the worst over the parameters
  for (const char* wire : {"bf16", "f16"}) {
    INFO(wire << " on the wire");
    TrainConfig compressed = small_config(16, 1, 12);
    compressed.grad_compression = wire;
    const RunResult& b = runs[wire] = run_ranks(2, compressed, data);
    REQUIRE(exact.losses.size() == b.losses.size());
    bool any_difference = false;
    for (size_t i = 0; i < exact.losses.size(); i++) {
      INFO("step " << i + 1 << ": " << exact.losses[i] << " vs " << b.losses[i]);
      REQUIRE(std::fabs(exact.losses[i] - b.losses[i]) <= 1e-2 * std::fabs(exact.losses[i]));  // bf16 keeps ~3 digits
      any_difference = any_difference || exact.losses[i] != b.losses[i];
    }
    REQUIRE(any_difference);  // the wire really carried 16 bits
    for (auto& [name, w] : exact.weights) {
      double e = rel_error(b.weights.at(name), w);
      REQUIRE(e <= 2e-2);
      weight_error[wire] = std::max(weight_error[wire], e);
    }
  }
  // Not the same 16 bits: f16's 3 more mantissa bits land closer to f32
  // (about 4-15 times here; these gradients are far above f16's subnormals).
  REQUIRE(runs["bf16"].losses != runs["f16"].losses);
  REQUIRE(weight_error["f16"] < weight_error["bf16"]);
}

TEST_CASE("the reducer sends f32 gradients as bf16 or f16 and averages them in fp32", "[ddp]") {
  // Two ranks: a + b is the same sum in either order, so the result is known
  // exactly: each rank's gradients rounded to the wire dtype, summed and
  // halved in fp32 (Gloo widens), rounded again, and widened back. The
  // alignment gaps outside the buckets keep each rank's own values.
  const models::MlpOptions shape{.in_features = 64, .hidden = {300, 200}, .classes = 10};
  for (DType wire : {DType::bf16, DType::f16}) {
    uint64_t seed = fresh_seed();
    INFO(dtype_name(wire) << " seed=" << seed);
    parallel::DdpOptions options{
        .bucket_cap_mb = 0.25, .first_bucket_mb = 0.01, .timeout = std::chrono::seconds(30), .wire_dtype = wire};
    models::Mlp layout(shape);
    layout.params.allocate(Device::cpu(), DType::f32, 1);
    int64_t n = layout.params.numel();
    std::vector<bool> reduced(n, false);
    for (const parallel::Bucket& b : parallel::assign_buckets(layout.params, options))
      std::fill(reduced.begin() + b.begin, reduced.begin() + b.end, true);
    std::vector<std::vector<float>> grads = {random_vector(n, seed), random_vector(n, seed + 1)}, want = grads;
    for (int64_t i = 0; i < n; i++) {
      if (!reduced[i]) continue;
      want[0][i] = want[1][i] = round_to((round_to(grads[0][i], wire) + round_to(grads[1][i], wire)) / 2, wire);
    }

    std::vector<std::vector<float>> got(2);
    std::vector<std::vector<DType>> wire_dtypes(2);
    for_each_rank(2, [&](const parallel::ProcessGroup& pg) {
      models::Mlp mlp(shape);
      mlp.params.allocate(Device::cpu(), DType::f32, 1);
      mlp.params.grads().copy_from(Tensor::from_vector(grads[pg.rank()], {n}));
      parallel::Reducer reducer(mlp.params, pg.comm, options);
      for (const parallel::Bucket& b : reducer.buckets()) wire_dtypes[pg.rank()].push_back(b.wire.dtype());
      reducer.prepare();
      reducer.finish(Stream());  // every bucket is left to finish()
      got[pg.rank()] = mlp.params.grads().to_vector();
    });
    for (int r = 0; r < 2; r++) {
      INFO("rank " << r);
      REQUIRE(wire_dtypes[r].size() >= 3);
      for (DType d : wire_dtypes[r]) REQUIRE(d == wire);
      int64_t mismatches = 0, first = 0;
      for (int64_t i = 0; i < n; i++)
        if (!(got[r][i] == want[r][i]) && mismatches++ == 0) first = i;
      INFO(mismatches << " mismatches, the first at " << first << ": " << got[r][first] << " vs " << want[r][first]);
      REQUIRE(mismatches == 0);
    }
    REQUIRE(want[0] != grads[0]);  // rounding to 16 bits changed something
  }
}

TEST_CASE("the trace of a 2-rank run shows all-reduces running during backward", "[ddp]") {
  ImageDataset data = synthetic(640, fresh_seed());
  fs::path trace = fs::temp_directory_path() / fmt::format("tandem_trace_{}.json", fresh_seed());
  TrainConfig config = small_config(32, 1, 6);
  config.bucket_cap_mb = 0.05;
  run_ranks(2, config, data, {256, 256, 256}, trace.string());
  std::ifstream in(trace);
  nlohmann::json events = nlohmann::json::parse(in)["traceEvents"];
  std::vector<nlohmann::json> comm, backward, forward;
  for (const auto& e : events) {
    if (e["ph"] != "X") continue;
    REQUIRE(e["dur"].get<double>() >= 0);
    if (e["cat"] == "comm") comm.push_back(e);
    if (e["cat"] == "backward") backward.push_back(e);
    if (e["cat"] == "forward") forward.push_back(e);
  }
  REQUIRE(backward.size() == 6 * 10);  // 6 steps x (4 Linear + 3 ReLU + 3 Dropout)
  REQUIRE(forward.size() >= 6 * 10);   // and the evaluation's
  for (const auto& f : forward) REQUIRE(f["tid"] != 2);  // the compute track
  REQUIRE(comm.size() >= 6 * 2);       // several buckets per step
  std::set<int64_t> buckets;
  for (const auto& c : comm) {
    REQUIRE(c["args"]["bytes"].get<int64_t>() > 0);
    buckets.insert(c["args"]["bucket"].get<int64_t>());
    REQUIRE(c["tid"] == 2);
  }
  REQUIRE(buckets.size() >= 2);
  REQUIRE(*buckets.begin() == 0);
  // Overlap: some backward module started while an all-reduce was running.
  int overlapping = 0;
  for (const auto& c : comm) {
    double c0 = c["ts"], c1 = c0 + c["dur"].get<double>();
    for (const auto& b : backward) {
      double b0 = b["ts"];
      overlapping += b0 > c0 && b0 < c1;
    }
  }
  REQUIRE(overlapping > 0);
  REQUIRE(fs::exists(fs::path(trace.string().substr(0, trace.string().size() - 5) + "-rank1.json")));
  fs::remove(trace);
  fs::remove(fs::path(trace.string().substr(0, trace.string().size() - 5) + "-rank1.json"));
}

TEST_CASE("finish() issues the buckets backward never reported in one group and traces when each ran", "[ddp]") {
  models::Mlp mlp({.in_features = 64, .hidden = {300, 200}, .classes = 10});
  mlp.params.allocate(Device::cpu(), DType::f32, 1);
  std::vector<float> grads = random_vector(mlp.params.numel(), fresh_seed());
  mlp.params.grads().copy_from(Tensor::from_vector(grads, {mlp.params.numel()}));
  auto comm = parallel::make_simulated_communicator(4, Device::cpu(), {.gbytes_per_s = 1, .latency_us = 200});
  parallel::DdpOptions options{.bucket_cap_mb = 0.25, .first_bucket_mb = 0.01, .timeout = std::chrono::seconds(10)};
  parallel::Reducer reducer(mlp.params, comm, options);
  size_t buckets = reducer.buckets().size();
  REQUIRE(buckets >= 3);
  fs::path path = fs::temp_directory_path() / fmt::format("tandem_finish_trace_{}.json", fresh_seed());
  {
    TraceWriter trace(0);
    reducer.prepare();
    auto start = TraceWriter::Clock::now();
    reducer.finish(Stream(), &trace);  // no grad_ready: every bucket is left to finish()
    trace.complete("finish", "step", TraceWriter::Track::compute, start, TraceWriter::Clock::now());
    trace.write(path.string());
  }
  REQUIRE(mlp.params.grads().to_vector() == grads);  // the average of identical ranks

  std::ifstream in(path);
  nlohmann::json events = nlohmann::json::parse(in)["traceEvents"];
  fs::remove(path);
  std::vector<nlohmann::json> comm_events;
  double step_start = -1, step_end = -1;
  for (const auto& e : events) {
    if (e["ph"] != "X") continue;
    if (e["cat"] == "comm") comm_events.push_back(e);
    if (e["cat"] == "step") {
      step_start = e["ts"].get<double>();
      step_end = step_start + e["dur"].get<double>();
    }
  }
  REQUIRE(comm_events.size() == buckets);
  std::sort(comm_events.begin(), comm_events.end(), [](const auto& a, const auto& b) { return a["ts"] < b["ts"]; });
  constexpr double kRoundingUs = 1e-3;  // ts + dur need not round to the next ts exactly
  double previous_end = step_start;
  for (const auto& c : comm_events) {  // one link: one after another, inside finish()
    INFO(c.dump());
    double ts = c["ts"].get<double>(), dur = c["dur"].get<double>();
    REQUIRE(dur >= 200);  // at least the latency
    REQUIRE(ts >= previous_end - kRoundingUs);
    REQUIRE(ts + dur <= step_end + kRoundingUs);
    previous_end = ts + dur;
  }
}
