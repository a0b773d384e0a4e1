#include "bench/bench_model.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <memory>
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
void random_tokens(int64_t B, int64_t T, int64_t vocab, Tensor* inputs, Tensor* targets) {
  *inputs = Tensor::empty({B, T}, DType::i32, Device::cpu());
  *targets = Tensor::empty({B * T}, DType::i32, Device::cpu());
  int32_t *in = inputs->data_as<int32_t>(), *tg = targets->data_as<int32_t>();
  for (int64_t b = 0; b < B; b++) {
    for (int64_t t = 0; t <= T; t++) {
      uint64_t i = static_cast<uint64_t>(b * (T + 1) + t);
      auto token = static_cast<int32_t>(philox4x32(i, kSeed + 1).v[0] % static_cast<uint64_t>(vocab));
      if (t < T) in[b * T + t] = token;
      if (t > 0) tg[b * T + t - 1] = token;
    }
  }
}

// B images of `features` pixels uniform in [-1, 1), labels uniform over `classes`.
void random_images(int64_t B, int64_t features, int64_t classes, Tensor* images, Tensor* labels) {
  *images = Tensor::empty({B, features}, DType::f32, Device::cpu());
  *labels = Tensor::empty({B}, DType::i32, Device::cpu());
  float* x = images->data_as<float>();
  for (int64_t i = 0; i < images->numel(); i++) x[i] = 2.f * philox_uniform(kSeed + 1, static_cast<uint64_t>(i)) - 1.f;
  int32_t* y = labels->data_as<int32_t>();
  for (int64_t b = 0; b < B; b++)
    y[b] = static_cast<int32_t>(philox4x32(static_cast<uint64_t>(b), kSeed + 4).v[0] % static_cast<uint64_t>(classes));
}

constexpr int64_t kImageFeatures = 28 * 28, kImageClasses = 10;

bool is_gpt2(const std::string& model) { return model.rfind("gpt2-", 0) == 0; }

const std::vector<std::string> kModelNames = {"gpt2-124m", "gpt2-350m", "gpt2-tiny", "lstm", "cnn", "resnet"};

[[noreturn]] void unknown_model(const std::string& name) {
  throw UserError(fmt::format("unknown model '{}' (expected gpt2-124m, gpt2-350m, gpt2-tiny, lstm, cnn or resnet)",
                              name));
}

// Per device: the batch the model trains with on the CPU (its config's),
// and one that keeps a GPU busy.
int64_t default_batch(const std::string& model, bool gpu) {
  if (is_gpt2(model)) return gpu ? kGpuBatch : kCpuBatch;
  if (model == "lstm") return gpu ? 128 : 32;
  return gpu ? 512 : 128;  // cnn, resnet
}

// The options with the defaults filled in for `device`; UserError for
// choices that cannot run.
ModelBenchOptions resolve(ModelBenchOptions o, Device device) {
  bool gpu = device.is_cuda();
  if (o.dtype.empty()) o.dtype = gpu && o.model != "lstm" ? "bf16" : "f32";
  if (o.dtype != "f32" && o.dtype != "bf16")
    throw UserError(fmt::format("unknown --dtype '{}' (expected f32 or bf16)", o.dtype));
  if (!gpu && o.dtype != "f32")
    throw UserError(fmt::format("--dtype {} needs a CUDA device; the CPU path computes in f32", o.dtype));
  if (o.batch_size < 0) throw UserError(fmt::format("--batch-size must be positive, got {}", o.batch_size));
  if (o.seq_len < 0) throw UserError(fmt::format("--seq-len must be positive, got {}", o.seq_len));
  if (o.batch_size == 0) o.batch_size = default_batch(o.model, gpu);
  if (is_gpt2(o.model)) {
    int64_t n_positions = gpt2_preset(o.model).n_positions;
    if (o.seq_len == 0) o.seq_len = gpu ? n_positions : std::min(n_positions, kCpuMaxSeqLen);
    if (o.seq_len > n_positions)
      throw UserError(fmt::format("--seq-len {} is longer than {}'s n_positions {}", o.seq_len, o.model,
                                  n_positions));
  } else if (o.model == "lstm") {
    if (o.seq_len == 0) o.seq_len = 64;  // models/lstm/fortunes.toml
  } else if (o.seq_len != 0) {
    throw UserError(fmt::format("--seq-len is for the token models (gpt2-*, lstm); {} takes 28x28 images", o.model));
  }
  if (o.steps < 1) throw UserError(fmt::format("--steps must be at least 1, got {}", o.steps));
  if (o.warmup < 0) throw UserError(fmt::format("--warmup must be >= 0, got {}", o.warmup));
  return o;
}

std::string sizes_str(const std::vector<int64_t>& v) {
  return fmt::format("[{}]", fmt::join(v, ", "));
}

// The model under test, its batch and its FLOP accounting.
struct Subject {
  std::shared_ptr<void> owner;  // the model object; net and params point into it
  Module* net = nullptr;
  ParameterSet* params = nullptr;
  std::string unit, architecture;
  nlohmann::json config;
  double flops_per_unit = 0;
  int64_t classes = 0;          // logits per row
  Tensor inputs, targets;       // on the host
};

// Keeps `m` alive in `s`; `net` maps the inputs to logits.
template <typename M>
void hold(Subject& s, std::shared_ptr<M> m, Module* net) {
  s.owner = m;
  s.net = net;
  s.params = &m->params;
}

// Random tokens for a language model; backward costs twice the forward
// unless the model has its own accounting (GPT-2's 6N + 12 L C T).
void token_batch(Subject& s, const ModelBenchOptions& o, int64_t vocab, double train_flops_per_token) {
  s.unit = "tokens";
  s.flops_per_unit = train_flops_per_token;
  s.classes = vocab;
  random_tokens(o.batch_size, o.seq_len, vocab, &s.inputs, &s.targets);
}

void image_batch(Subject& s, const ModelBenchOptions& o, int64_t classes, double forward_flops_per_image) {
  s.unit = "images";
  s.flops_per_unit = 3 * forward_flops_per_image;
  s.classes = classes;
  random_images(o.batch_size, kImageFeatures, classes, &s.inputs, &s.targets);
}

Subject make_subject(const ModelBenchOptions& o) {
  Subject s;
  if (is_gpt2(o.model)) {
    models::Gpt2Config c = gpt2_preset(o.model);
    auto m = std::make_shared<models::Gpt2>(c);
    hold(s, m, m.get());
    TANDEM_CHECK(m->params.count() == models::gpt2_num_parameters(c),
                 fmt::format("the model has {} parameters, gpt2_num_parameters says {}", m->params.count(),
                             models::gpt2_num_parameters(c)));
    s.architecture = fmt::format("L={} H={} C={} V={}", c.n_layer, c.n_head, c.n_embd, c.vocab_size);
    s.config = {{"vocab_size", c.vocab_size}, {"n_positions", c.n_positions}, {"n_layer", c.n_layer},
                {"n_head", c.n_head}, {"n_embd", c.n_embd}};
    token_batch(s, o, c.vocab_size, models::gpt2_flops_per_token(c, o.seq_len));
  } else if (o.model == "lstm") {
    models::CharLstmOptions c = lstm_preset();
    auto m = std::make_shared<models::CharLstm>(c);
    hold(s, m, &m->net);
    s.architecture = fmt::format("embedding={} hidden={} layers={} V={}", c.embedding, c.hidden, c.layers,
                                 c.vocab_size);
    s.config = {{"vocab_size", c.vocab_size}, {"embedding", c.embedding}, {"hidden", c.hidden},
                {"layers", c.layers}};
    token_batch(s, o, c.vocab_size, 3 * m->forward_flops_per_token);
  } else if (o.model == "cnn") {
    models::CnnOptions c = cnn_preset();
    auto m = std::make_shared<models::Cnn>(c);
    hold(s, m, &m->net);
    s.architecture = fmt::format("channels={} hidden={} 28x28", sizes_str(c.channels), c.hidden);
    s.config = {{"channels", c.channels}, {"hidden", c.hidden}, {"dropout", c.dropout}, {"batchnorm", c.batchnorm}};
    image_batch(s, o, c.classes, m->forward_flops_per_image);
  } else if (o.model == "resnet") {
    models::ResNetOptions c = resnet_preset();
    auto m = std::make_shared<models::ResNet>(c);
    hold(s, m, &m->net);
    s.architecture = fmt::format("channels={} blocks={} 28x28", sizes_str(c.channels), c.blocks);
    s.config = {{"channels", c.channels}, {"blocks", c.blocks}};
    image_batch(s, o, c.classes, m->forward_flops_per_image);
  } else {
    unknown_model(o.model);
  }
  return s;
}

// `host` on the device, in `dtype` when it holds f32 values (tokens and labels stay i32).
Tensor to_device(const Tensor& host, Device device, DType dtype, const Stream& stream) {
  if (device.is_cpu()) return host;
  Tensor on_device = host.to(device);
  if (host.dtype() != DType::f32 || dtype == DType::f32) return on_device;
  Tensor out = Tensor::empty(host.shape(), dtype, device);
  kernels::cast(out, on_device, stream);
  stream.synchronize();
  return out;
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
  unknown_model(name);
}

models::CharLstmOptions lstm_preset() {
  return {.vocab_size = 256, .embedding = 64, .hidden = 512, .layers = 1};
}

models::CnnOptions cnn_preset() {
  return {.image_size = 28, .channels = {32, 64}, .hidden = 128, .classes = kImageClasses, .dropout = 0.1f,
          .batchnorm = false};
}

models::ResNetOptions resnet_preset() {
  return {.image_size = 28, .channels = {16, 32, 64}, .blocks = 1, .classes = kImageClasses};
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
  Device device = resolve_device(options.device);
  if (device.is_cuda()) {
    require_cuda("tandem bench model --device cuda");
    if (device.index >= cuda_device_count())
      throw UserError(fmt::format("device cuda:{} does not exist ({} CUDA devices visible)", device.index,
                                  cuda_device_count()));
    set_current_device(device);
  }
  if (std::find(kModelNames.begin(), kModelNames.end(), options.model) == kModelNames.end())
    unknown_model(options.model);
  ModelBenchOptions o = resolve(options, device);
  if (device.is_cpu() && is_gpt2(o.model) && o.model != "gpt2-tiny")
    log_warn("{} on the CPU: {} parameters, expect seconds per step and several GB of memory; gpt2-tiny is the "
             "CPU-sized preset",
             o.model, models::gpt2_num_parameters(gpt2_preset(o.model)));

  Context ctx;
  ctx.device = device;
  ctx.dtype = parse_dtype(o.dtype);
  ctx.stream = Stream::create(device);
  ctx.seed = kSeed;
  Subject s = make_subject(o);
  Tensor init = s.params->initial_values(kSeed);
  s.params->allocate(device, ctx.dtype, init);
  OptimizerConfig oc;
  oc.name = "adamw";
  oc.weight_decay = kWeightDecay;
  Optimizer optimizer(*s.params, oc, init);
  init = Tensor();
  Tensor inputs = to_device(s.inputs, device, ctx.dtype, ctx.stream);
  Tensor targets = to_device(s.targets, device, ctx.dtype, ctx.stream);
  CrossEntropyLoss loss_fn;

  auto step = [&] {
    s.params->zero_grads(ctx.stream);
    ctx.rng_offset = 0;
    Tensor logits = s.net->forward(inputs, ctx);
    loss_fn.forward(logits.reshape(rows_by_last(logits)), targets, ctx);
    s.net->backward(loss_fn.backward(ctx).reshape(logits.shape()), ctx);
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
  r.unit = s.unit;
  r.architecture = s.architecture;
  r.config = s.config;
  r.parameters = s.params->count();
  r.batch_size = o.batch_size;
  r.seq_len = o.seq_len;
  r.steps = o.steps;
  r.warmup = o.warmup;
  r.step_ms = 1e3 * seconds / o.steps;
  int64_t units_per_step = s.unit == "tokens" ? o.batch_size * o.seq_len : o.batch_size;
  r.units_per_s = static_cast<double>(units_per_step) * o.steps / seconds;
  r.flops_per_unit = s.flops_per_unit;
  r.model_tflops = r.flops_per_unit * r.units_per_s / 1e12;
  r.loss = loss_fn.mean(ctx);  // the buffers hold the last step's losses
  r.initial_loss = std::log(static_cast<double>(s.classes));
  // Random init gives logits near 0, so the loss is about ln(classes): a NaN
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
  bool tokens = r.unit == "tokens";
  const char* unit1 = tokens ? "token" : "image";
  fmt::print("# bench model: {} ({}), {} parameters, random {}, AdamW lr {} wd {}\n", r.model, r.architecture,
             r.parameters, r.unit, kLr, kWeightDecay);
  fmt::print("{:<14} {} ({})\n", "device", r.device, r.device_name);
  fmt::print("{:<14} {}\n", "dtype", r.dtype);
  if (tokens)
    fmt::print("{:<14} B={} T={} ({} tokens per step)\n", "batch", r.batch_size, r.seq_len, r.batch_size * r.seq_len);
  else
    fmt::print("{:<14} B={} ({} images per step)\n", "batch", r.batch_size, r.batch_size);
  fmt::print("{:<14} {} timed after {} warm-up\n", "steps", r.steps, r.warmup);
  fmt::print("{:<14} {:.3f}\n", "step_ms", r.step_ms);
  fmt::print("{:<14} {:.0f}\n", tokens ? "tokens_per_s" : "images_per_s", r.units_per_s);
  std::string accounting = is_gpt2(r.model) ? "6N + 12LCT" : "3 x forward";
  fmt::print("{:<14} {:.4g} ({} = {:.4g} MFLOP per {})\n", "model_TFLOP/s", r.model_tflops, accounting,
             r.flops_per_unit / 1e6, unit1);
  if (r.peak_tflops > 0)
    fmt::print("{:<14} {:.1f} % of {:.1f} TFLOP/s dense bf16 ({} peak{})\n", "MFU", 100 * r.mfu, r.peak_tflops,
               r.peak_source, r.peak_source == "datasheet" ? " for " + r.device_name : ": an 8192^3 bf16 matmul here");
  else
    fmt::print("{:<14} n/a on the CPU\n", "MFU");
  fmt::print("{:<14} {:.4f} (last step; ln({}) = {:.4f})\n", "loss", r.loss, tokens ? "V" : "classes", r.initial_loss);
}

nlohmann::json model_json(const ModelBenchReport& r) {
  bool tokens = r.unit == "tokens";
  nlohmann::json j = {{"framework", "tandem"},
                      {"model", r.model},
                      {"config", r.config},
                      {"parameters", r.parameters},
                      {"unit", r.unit},
                      {"batch_size", r.batch_size},
                      {"dtype", r.dtype},
                      {"device", r.device},
                      {"device_name", r.device_name},
                      {"steps", r.steps},
                      {"warmup", r.warmup},
                      {"step_ms", r.step_ms},
                      {tokens ? "tokens_per_s" : "images_per_s", r.units_per_s},
                      {tokens ? "flops_per_token" : "flops_per_image", r.flops_per_unit},
                      {"model_tflops", r.model_tflops},
                      {"peak_tflops", nullptr},
                      {"peak_source", nullptr},
                      {"mfu", nullptr},
                      {"loss", r.loss}};
  if (tokens) j["seq_len"] = r.seq_len;
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
