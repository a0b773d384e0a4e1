#include "bench/bench_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <vector>

#include "kernels/cast.h"
#include "kernels/matmul.h"
#include "runtime/core/error.h"
#include "runtime/core/log.h"
#include "runtime/core/philox.h"
#include "runtime/layers.h"
#include "runtime/optimizer.h"

#if TANDEM_HAS_CUDA
#include <cuda_runtime.h>

#include "runtime/core/cuda_check.h"
#endif

namespace tandem::bench {

namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kSeed = 42;             // weights; tokens draw from kSeed + 1
constexpr float kLr = 1e-4f;
constexpr float kWeightDecay = 0.1f;
constexpr int64_t kGpuBatch = 8;
constexpr int64_t kCpuBatch = 4;
constexpr int64_t kCpuMaxSeqLen = 128;
constexpr int64_t kPeakMatmulSize = 8192;  // the measured peak's GEMM: 8192^3, as `bench kernels`
constexpr int kPeakWarmup = 3, kPeakReps = 15;

std::string device_name(Device device) {
  if (device.is_cpu()) return "cpu";
#if TANDEM_HAS_CUDA
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device.index));
  return prop.name;
#else
  return device.str();
#endif
}

// Values in [-1, 1) (not zeros: a GEMM of zeros can run faster than real data).
Tensor random_matrix(int64_t n, DType dtype, Device device, uint64_t seed, const Stream& stream) {
  Tensor host = Tensor::empty({n, n}, DType::f32, Device::cpu());
  float* p = host.data_as<float>();
  for (int64_t i = 0; i < host.numel(); i++) p[i] = 2.f * philox_uniform(seed, static_cast<uint64_t>(i)) - 1.f;
  Tensor f32 = host.to(device), out = Tensor::empty({n, n}, dtype, device);
  kernels::cast(out, f32, stream);
  stream.synchronize();
  return out;
}

// The rate of a large bf16 GEMM through our cuBLASLt path: `bench kernels`'s
// "measured peak", the MFU's denominator when the datasheet's is not known.
double measured_matmul_tflops(Device device, const Stream& stream) {
  int64_t m = kPeakMatmulSize;
  Tensor x = random_matrix(m, DType::bf16, device, kSeed + 2, stream);
  Tensor w = random_matrix(m, DType::bf16, device, kSeed + 3, stream);
  Tensor y = Tensor::empty({m, m}, DType::bf16, device);
  for (int i = 0; i < kPeakWarmup; i++) kernels::matmul_forward(y, x, w, {}, stream);
  std::vector<double> ms;
  for (int r = 0; r < kPeakReps; r++) {
    Event start = Event::create(device, true), stop = Event::create(device, true);
    start.record(stream);
    kernels::matmul_forward(y, x, w, {}, stream);
    stop.record(stream);
    stop.synchronize();
    ms.push_back(stop.elapsed_ms_since(start));
  }
  std::sort(ms.begin(), ms.end());
  return kernels::matmul_flops(m, m, m) / (ms[ms.size() / 2] * 1e-3) / 1e12;
}

// (B, T + 1) tokens uniform over [0, vocab): inputs are the first T of each
// row, targets the last T, as a language-model batch.
struct TokenBatch {
  Tensor inputs;   // (B, T) i32
  Tensor targets;  // (B*T) i32
};

TokenBatch random_tokens(int64_t B, int64_t T, int64_t vocab, Device device) {
  Tensor inputs = Tensor::empty({B, T}, DType::i32, Device::cpu());
  Tensor targets = Tensor::empty({B * T}, DType::i32, Device::cpu());
  int32_t *in = inputs.data_as<int32_t>(), *tg = targets.data_as<int32_t>();
  for (int64_t b = 0; b < B; b++) {
    for (int64_t t = 0; t <= T; t++) {
      uint64_t i = static_cast<uint64_t>(b * (T + 1) + t);
      auto token = static_cast<int32_t>(philox4x32(i, kSeed + 1).v[0] % static_cast<uint64_t>(vocab));
      if (t < T) in[b * T + t] = token;
      if (t > 0) tg[b * T + t - 1] = token;
    }
  }
  if (device.is_cpu()) return {inputs, targets};
  return {inputs.to(device), targets.to(device)};
}

// The options with the defaults filled in for `device`; UserError for
// choices that cannot run.
ModelBenchOptions resolve(ModelBenchOptions o, const models::Gpt2Config& config, Device device) {
  bool gpu = device.is_cuda();
  if (o.dtype.empty()) o.dtype = gpu ? "bf16" : "f32";
  if (o.dtype != "f32" && o.dtype != "bf16")
    throw UserError(fmt::format("unknown --dtype '{}' (expected f32 or bf16)", o.dtype));
  if (!gpu && o.dtype != "f32")
    throw UserError(fmt::format("--dtype {} needs a CUDA device; the CPU path computes in f32", o.dtype));
  if (o.batch_size < 0) throw UserError(fmt::format("--batch-size must be positive, got {}", o.batch_size));
  if (o.seq_len < 0) throw UserError(fmt::format("--seq-len must be positive, got {}", o.seq_len));
  if (o.batch_size == 0) o.batch_size = gpu ? kGpuBatch : kCpuBatch;
  if (o.seq_len == 0) o.seq_len = gpu ? config.n_positions : std::min(config.n_positions, kCpuMaxSeqLen);
  if (o.seq_len > config.n_positions)
    throw UserError(fmt::format("--seq-len {} is longer than {}'s n_positions {}", o.seq_len, o.model,
                                config.n_positions));
  if (o.steps < 1) throw UserError(fmt::format("--steps must be at least 1, got {}", o.steps));
  if (o.warmup < 0) throw UserError(fmt::format("--warmup must be >= 0, got {}", o.warmup));
  return o;
}

}  // namespace

models::Gpt2Config gpt2_preset(const std::string& name) {
  models::Gpt2Config c;  // the defaults are GPT-2 small's
  if (name == "gpt2-124m") return c;
  if (name == "gpt2-350m") {
    c.n_layer = 24;
    c.n_head = 16;
    c.n_embd = 1024;
    return c;
  }
  if (name == "gpt2-tiny") {  // models/gpt2/tiny.toml
    c.vocab_size = 256;
    c.n_positions = 128;
    c.n_layer = 4;
    c.n_head = 4;
    c.n_embd = 128;
    return c;
  }
  throw UserError(fmt::format("unknown model '{}' (expected gpt2-124m, gpt2-350m or gpt2-tiny)", name));
}

double datasheet_bf16_tflops(const std::string& name) {
  // Dense bf16 tensor-core rates (the datasheets' sparsity figures halved).
  // NVL variants run at other clocks and power limits: not listed, measured.
  auto has = [&](const char* part) { return name.find(part) != std::string::npos; };
  if (has("NVL")) return 0;
  if (has("H200")) return 989.4;
  if (has("H100")) return has("PCIe") ? 756.0 : 989.4;  // else SXM5 ("H100 80GB HBM3")
  if (has("A100")) return 312.0;
  return 0;
}

ModelBenchReport run_model_bench(const ModelBenchOptions& options) {
  models::Gpt2Config config = gpt2_preset(options.model);
  Device device = resolve_device(options.device);
  if (device.is_cuda()) {
    require_cuda("tandem bench model --device cuda");
    if (device.index >= cuda_device_count())
      throw UserError(fmt::format("device cuda:{} does not exist ({} CUDA devices visible)", device.index,
                                  cuda_device_count()));
    set_current_device(device);
  }
  ModelBenchOptions o = resolve(options, config, device);
  if (device.is_cpu() && o.model != "gpt2-tiny")
    log_warn("{} on the CPU: {} parameters, expect seconds per step and several GB of memory; gpt2-tiny is the "
             "CPU-sized preset",
             o.model, models::gpt2_num_parameters(config));

  Context ctx;
  ctx.device = device;
  ctx.dtype = parse_dtype(o.dtype);
  ctx.stream = Stream::create(device);
  ctx.seed = kSeed;
  models::Gpt2 model(config);
  Tensor init = model.params.initial_values(kSeed);
  model.params.allocate(device, ctx.dtype, init);
  OptimizerConfig oc;
  oc.name = "adamw";
  oc.weight_decay = kWeightDecay;
  Optimizer optimizer(model.params, oc, init);
  init = Tensor();
  TokenBatch batch = random_tokens(o.batch_size, o.seq_len, config.vocab_size, device);
  CrossEntropyLoss loss_fn;

  auto step = [&] {
    model.params.zero_grads(ctx.stream);
    Tensor logits = model.forward(batch.inputs, ctx);
    loss_fn.forward(logits.reshape(rows_by_last(logits)), batch.targets, ctx);
    model.backward(loss_fn.backward(ctx), ctx);
    optimizer.step(kLr, 1.f, ctx.stream);
  };
  for (int i = 0; i < o.warmup; i++) step();
  ctx.stream.synchronize();
  Clock::time_point start = Clock::now();
  for (int i = 0; i < o.steps; i++) step();
  ctx.stream.synchronize();
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();

  ModelBenchReport r;
  r.model = o.model;
  r.device = device.str();
  r.device_name = device_name(device);
  r.dtype = o.dtype;
  r.config = config;
  r.parameters = model.params.numel();
  TANDEM_CHECK(r.parameters == models::gpt2_num_parameters(config),
               fmt::format("the model has {} parameters, gpt2_num_parameters says {}", r.parameters,
                           models::gpt2_num_parameters(config)));
  r.batch_size = o.batch_size;
  r.seq_len = o.seq_len;
  r.steps = o.steps;
  r.warmup = o.warmup;
  r.step_ms = 1e3 * seconds / o.steps;
  r.tokens_per_s = static_cast<double>(o.batch_size * o.seq_len) * o.steps / seconds;
  r.flops_per_token = models::gpt2_flops_per_token(config, o.seq_len);
  r.model_tflops = r.flops_per_token * r.tokens_per_s / 1e12;
  r.loss = loss_fn.mean(ctx);  // the buffers hold the last step's losses
  // Random init gives logits near 0, so the loss is about ln(vocab): a NaN
  // here is a kernel bug, not bad input.
  TANDEM_CHECK(std::isfinite(r.loss), fmt::format("the loss of the last step is {}", r.loss));
  if (device.is_cuda()) {
    r.peak_tflops = datasheet_bf16_tflops(r.device_name);
    r.peak_source = "datasheet";
    if (r.peak_tflops <= 0) {
      r.peak_tflops = measured_matmul_tflops(device, ctx.stream);
      r.peak_source = "measured";
    }
    r.mfu = r.model_tflops / r.peak_tflops;
  }
  return r;
}

void print_model_report(const ModelBenchReport& r) {
  const models::Gpt2Config& c = r.config;
  fmt::print("# bench model: {} (L={} H={} C={} V={}), {} parameters, random tokens, AdamW lr {} wd {}\n", r.model,
             c.n_layer, c.n_head, c.n_embd, c.vocab_size, r.parameters, kLr, kWeightDecay);
  fmt::print("{:<14} {} ({})\n", "device", r.device, r.device_name);
  fmt::print("{:<14} {}\n", "dtype", r.dtype);
  fmt::print("{:<14} B={} T={} ({} tokens per step)\n", "batch", r.batch_size, r.seq_len, r.batch_size * r.seq_len);
  fmt::print("{:<14} {} timed after {} warm-up\n", "steps", r.steps, r.warmup);
  fmt::print("{:<14} {:.3f}\n", "step_ms", r.step_ms);
  fmt::print("{:<14} {:.0f}\n", "tokens_per_s", r.tokens_per_s);
  fmt::print("{:<14} {:.4g} (6N + 12LCT = {:.4g} GFLOP per token)\n", "model_TFLOP/s", r.model_tflops,
             r.flops_per_token / 1e9);
  if (r.peak_tflops > 0)
    fmt::print("{:<14} {:.1f} % of {:.1f} TFLOP/s dense bf16 ({} peak{})\n", "MFU", 100 * r.mfu, r.peak_tflops,
               r.peak_source, r.peak_source == "datasheet" ? " for " + r.device_name : ": an 8192^3 bf16 matmul here");
  else
    fmt::print("{:<14} n/a on the CPU\n", "MFU");
  fmt::print("{:<14} {:.4f} (last step; ln(V) = {:.4f})\n", "loss", r.loss, std::log(static_cast<double>(c.vocab_size)));
}

nlohmann::json model_json(const ModelBenchReport& r) {
  const models::Gpt2Config& c = r.config;
  nlohmann::json j = {{"framework", "tandem"},
                      {"model", r.model},
                      {"config", {{"vocab_size", c.vocab_size}, {"n_positions", c.n_positions},
                                  {"n_layer", c.n_layer}, {"n_head", c.n_head}, {"n_embd", c.n_embd}}},
                      {"parameters", r.parameters},
                      {"batch_size", r.batch_size},
                      {"seq_len", r.seq_len},
                      {"dtype", r.dtype},
                      {"device", r.device},
                      {"device_name", r.device_name},
                      {"steps", r.steps},
                      {"warmup", r.warmup},
                      {"step_ms", r.step_ms},
                      {"tokens_per_s", r.tokens_per_s},
                      {"flops_per_token", r.flops_per_token},
                      {"model_tflops", r.model_tflops},
                      {"peak_tflops", nullptr},
                      {"peak_source", nullptr},
                      {"mfu", nullptr},
                      {"loss", r.loss}};
  if (r.peak_tflops > 0) {
    j["peak_tflops"] = r.peak_tflops;
    j["peak_source"] = r.peak_source;
    j["mfu"] = r.mfu;
  }
  return j;
}

void run_model_command(const ModelBenchOptions& options, const std::string& json_out) {
  ModelBenchReport report = run_model_bench(options);
  print_model_report(report);
  if (!json_out.empty()) {
    std::ofstream out(json_out);
    out << model_json(report).dump(2) << "\n";
    if (!out) throw UserError(fmt::format("cannot write {}", json_out));
  }
}

}  // namespace tandem::bench
