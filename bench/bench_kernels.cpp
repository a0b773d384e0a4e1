#include "bench/bench_kernels.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>

#include "kernels/activation.h"
#include "kernels/attention.h"
#include "kernels/bias.h"
#include "kernels/cast.h"
#include "kernels/dropout.h"
#include "kernels/embedding.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"
#include "kernels/optimizer.h"
#include "kernels/reduce.h"
#include "kernels/residual.h"
#include "kernels/softmax_cross_entropy.h"
#include "runtime/core/philox.h"

namespace tandem::bench {

namespace {

constexpr int kWarmup = 3;
constexpr int kReps = 15;

// Median milliseconds per call of `fn` on `stream`.
double time_ms(Device device, const Stream& stream, const std::function<void()>& fn) {
  for (int i = 0; i < kWarmup; i++) fn();
  stream.synchronize();
  std::vector<double> times;
  for (int r = 0; r < kReps; r++) {
    if (device.is_cuda()) {
      Event start = Event::create(device, true), stop = Event::create(device, true);
      start.record(stream);
      fn();
      stop.record(stream);
      stop.synchronize();
      times.push_back(stop.elapsed_ms_since(start));
    } else {
      auto t0 = std::chrono::steady_clock::now();
      fn();
      times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Random values in [-1, 1) (never zeros: zeros run faster and hide bugs).
Tensor random(Shape shape, DType dtype, Device device, uint64_t seed) {
  Tensor host = Tensor::empty(shape, DType::f32, Device::cpu());
  float* p = host.data_as<float>();
  for (int64_t i = 0; i < host.numel(); i++) p[i] = 2.f * philox_uniform(seed, i) - 1.f;
  Tensor f32 = device.is_cpu() ? host : host.to(device);
  if (dtype == DType::f32) return f32;
  Tensor out = Tensor::empty(shape, dtype, device);
  Stream s = Stream::default_for(device);
  kernels::cast(out, f32, s);
  s.synchronize();
  return out;
}

Tensor random_indices(int64_t n, int64_t range, Device device, uint64_t seed) {
  Tensor host = Tensor::empty({n}, DType::i32, Device::cpu());
  int32_t* p = host.data_as<int32_t>();
  for (int64_t i = 0; i < n; i++) p[i] = static_cast<int32_t>(philox4x32(i, seed).v[0] % range);
  return device.is_cpu() ? host : host.to(device);
}

struct Bench {
  Device device;
  Stream stream;
  KernelReport& report;

  // Records one row: `bytes` moved and `flops` done per call.
  void add(const std::string& kernel, const std::string& shape, DType dtype, double bytes, double flops,
           const std::function<void()>& fn) {
    KernelResult r{kernel, shape, dtype_name(dtype)};
    r.ms = time_ms(device, stream, fn);
    r.gbytes_per_s = bytes / (r.ms * 1e-3) / 1e9;
    r.tflops = flops / (r.ms * 1e-3) / 1e12;
    r.pct_of_peak = flops > 0 && report.peak_tflops > 0 ? 100.0 * r.tflops / report.peak_tflops
                                                       : 100.0 * r.gbytes_per_s / report.peak_gbytes_per_s;
    report.results.push_back(r);
  }
};

void measure_peaks(Bench& b, DType fast) {
  bool gpu = b.device.is_cuda();
  int64_t n = gpu ? (int64_t{1} << 28) : (int64_t{1} << 24);  // 1 GiB / 64 MiB of f32
  Tensor src = random({n}, DType::f32, b.device, 1), dst = Tensor::empty({n}, DType::f32, b.device);
  double ms = time_ms(b.device, b.stream, [&] { dst.copy_from(src, b.stream); });
  b.report.peak_gbytes_per_s = 2.0 * src.nbytes() / (ms * 1e-3) / 1e9;

  int64_t m = gpu ? 8192 : 1024;
  Tensor x = random({m, m}, fast, b.device, 2), w = random({m, m}, fast, b.device, 3);
  Tensor y = Tensor::empty({m, m}, fast, b.device);
  ms = time_ms(b.device, b.stream, [&] { kernels::matmul_forward(y, x, w, {}, b.stream); });
  b.report.peak_tflops = 2.0 * m * m * m / (ms * 1e-3) / 1e12;
}

void bench_dtype(Bench& b, DType dt) {
  Device d = b.device;
  bool gpu = d.is_cuda();
  double es = static_cast<double>(dtype_size(dt));
  // GPT-2 124M shapes on a GPU (B*T = 8192 tokens); a quarter-size on CPU.
  int64_t N = gpu ? 8192 : 512, C = 768, OC = 3072, V = gpu ? 50257 : 8192;
  std::string nc = fmt::format("N={} C={}", N, C);

  Tensor x = random({N, C}, dt, d, 10), w = random({OC, C}, dt, d, 11), bias = random({OC}, dt, d, 12);
  Tensor y = Tensor::empty({N, OC}, dt, d), pre = Tensor::empty({N, OC}, dt, d);
  Tensor dx = Tensor::empty({N, C}, dt, d), dw = random({OC, C}, dt, d, 13), db = random({OC}, dt, d, 14);
  double mm_flops = 2.0 * N * C * OC;
  std::string mm_shape = fmt::format("N={} C={} OC={}", N, C, OC);
  b.add("matmul_forward+bias", mm_shape, dt, es * (N * C + OC * C + N * OC), mm_flops, [&] {
    kernels::matmul_forward(y, x, w, {.bias = bias, .epilogue = kernels::Epilogue::bias, .pre_gelu = {}},
                            b.stream);
  });
  b.add("matmul_forward+gelu", mm_shape, dt, es * (N * C + OC * C + 2 * N * OC), mm_flops, [&] {
    kernels::matmul_forward(y, x, w, {.bias = bias, .epilogue = kernels::Epilogue::gelu_bias, .pre_gelu = pre},
                            b.stream);
  });
  b.add("matmul_backward", mm_shape, dt, es * (2 * N * C + 3 * OC * C + N * OC), 2 * mm_flops,
        [&] { kernels::matmul_backward(dx, dw, db, y, x, w, b.stream); });

  int64_t big = N * OC;
  std::string nbig = fmt::format("n={}", big);
  Tensor h = random({big}, dt, d, 20), g = random({big}, dt, d, 21), out = Tensor::empty({big}, dt, d);
  b.add("gelu_forward", nbig, dt, es * 2 * big, 0,
        [&] { kernels::activation_forward(kernels::Activation::gelu, out, h, b.stream); });
  b.add("gelu_backward", nbig, dt, es * 3 * big, 0,
        [&] { kernels::activation_backward(kernels::Activation::gelu, out, h, g, b.stream); });
  b.add("bias_backward", fmt::format("N={} C={}", N, OC), dt, es * (N * OC + 2 * OC), 0,
        [&] { kernels::bias_backward(db, y, b.stream); });
  b.add("residual_add", nbig, dt, es * 3 * big, 0, [&] { kernels::residual_add(out, h, g, b.stream); });
  b.add("dropout_forward", nbig, dt, es * 2 * big, 0,
        [&] { kernels::dropout_forward(out, h, {.p = 0.1f, .seed = 1, .offset = 0}, b.stream); });

  Tensor lw = random({C}, dt, d, 30), lb = random({C}, dt, d, 31), ly = Tensor::empty({N, C}, dt, d);
  Tensor mean = Tensor::empty({N}, DType::f32, d), rstd = Tensor::empty({N}, DType::f32, d);
  Tensor ldw = random({C}, dt, d, 32), ldb = random({C}, dt, d, 33), ldy = random({N, C}, dt, d, 34);
  b.add("layernorm_forward", nc, dt, es * 2 * N * C, 0,
        [&] { kernels::layernorm_forward(ly, mean, rstd, x, lw, lb, {}, b.stream); });
  b.add("layernorm_backward", nc, dt, es * 3 * N * C, 0,
        [&] { kernels::layernorm_backward(dx, ldw, ldb, ldy, x, lw, mean, rstd, b.stream); });

  // Causal attention at GPT-2 124M's shape (B=8, T=1024, 12 heads of 64) on
  // a GPU; one sequence of 128 on CPU. The forward runs first, so the
  // backward gets a real out and lse.
  int64_t AB = gpu ? 8 : 1, AT = gpu ? 1024 : 128, NH = 12, HS = C / NH;
  Tensor qkv = random({AB, AT, 3 * C}, dt, d, 35), att = Tensor::empty({AB, AT, C}, dt, d);
  Tensor lse = Tensor::empty({AB, NH, AT}, DType::f32, d), datt = random({AB, AT, C}, dt, d, 36);
  Tensor dqkv = Tensor::empty({AB, AT, 3 * C}, dt, d);
  std::string attn_shape = fmt::format("B={} T={} NH={} HS={}", AB, AT, NH, HS);
  double att_flops = kernels::attention_forward_flops(AB, AT, NH, HS), lse_bytes = 4.0 * AB * NH * AT;
  b.add("attention_forward", attn_shape, dt, es * 4 * AB * AT * C + lse_bytes, att_flops,
        [&] { kernels::attention_forward(att, lse, qkv, NH, b.stream); });
  b.add("attention_backward", attn_shape, dt, es * 8 * AB * AT * C + lse_bytes, 2.5 * att_flops,
        [&] { kernels::attention_backward(dqkv, datt, qkv, att, lse, NH, b.stream); });

  Tensor logits = random({N, V}, dt, d, 40), dlogits = Tensor::empty({N, V}, dt, d);
  Tensor targets = random_indices(N, V, d, 41), losses = Tensor::empty({N}, DType::f32, d);
  std::string nv = fmt::format("N={} V={}", N, V);
  b.add("softmax_xent_forward", nv, dt, es * N * V, 0,
        [&] { kernels::softmax_cross_entropy_forward(losses, logits, targets, b.stream); });
  b.add("softmax_xent_backward", nv, dt, es * 2 * N * V, 0,
        [&] { kernels::softmax_cross_entropy_backward(dlogits, logits, targets, 1.f / N, b.stream); });

  Tensor table = random({V, C}, dt, d, 50), dtable = random({V, C}, dt, d, 51), idx = random_indices(N, V, d, 52);
  std::string vc = fmt::format("N={} V={} C={}", N, V, C);
  b.add("embedding_forward", vc, dt, es * 2 * N * C, 0, [&] { kernels::embedding_forward(ly, table, idx, b.stream); });
  b.add("embedding_backward", vc, dt, es * 3 * N * C, 0,
        [&] { kernels::embedding_backward(dtable, ldy, idx, b.stream); });
}

void bench_optimizer(Bench& b, DType dt) {
  Device d = b.device;
  int64_t n = d.is_cuda() ? 124'000'000 : 4'000'000;  // GPT-2 124M's parameter count on a GPU
  double es = static_cast<double>(dtype_size(dt));
  bool master = dt != DType::f32;
  Tensor params = random({n}, dt, d, 60), grads = random({n}, dt, d, 61);
  Tensor m = random({n}, DType::f32, d, 62), v = random({n}, DType::f32, d, 63);
  Tensor w32 = master ? random({n}, DType::f32, d, 64) : Tensor();
  Tensor total = Tensor::empty({1}, DType::f32, d);
  Tensor scratch = Tensor::empty({kernels::kReduceScratchElems}, DType::f32, d);
  Tensor as_f32 = Tensor::empty({n}, DType::f32, d), as_bf16 = Tensor::empty({n}, dt, d);
  std::string shape = fmt::format("n={}", n);
  // AdamW: params and master read+written, grads read, m and v read+written.
  double adam_bytes = n * (2 * es + es + 16 + (master ? 8 : 0));
  int64_t step = 1;
  b.add("adamw_step", shape, dt, adam_bytes, 0, [&] {
    kernels::adamw_step(params, w32, grads, m, v, {.lr = 1e-4f, .step = step++}, b.stream);
  });
  b.add("sgd_momentum_step", shape, dt, n * (2 * es + es + 8 + (master ? 8 : 0)), 0, [&] {
    kernels::sgd_step(params, w32, grads, m, {.lr = 1e-4f, .momentum = 0.9f}, b.stream);
  });
  b.add("norm_squared", shape, dt, es * n, 0, [&] { kernels::norm_squared(total, grads, scratch, b.stream); });
  if (dt != DType::f32) {
    b.add("cast_f32_to_bf16", shape, dt, n * (4 + 2), 0, [&] { kernels::cast(as_bf16, w32, b.stream); });
    b.add("cast_bf16_to_f32", shape, dt, n * (2 + 4), 0, [&] { kernels::cast(as_f32, params, b.stream); });
  }
}

}  // namespace

KernelReport run_kernel_bench(Device device) {
  KernelReport report;
  report.device = device.str();
  set_current_device(device);
  Bench b{device, Stream::create(device), report};
  DType fast = device.is_cuda() ? DType::bf16 : DType::f32;
  measure_peaks(b, fast);
  for (DType dt : device.is_cuda() ? std::vector<DType>{DType::bf16, DType::f32} : std::vector<DType>{DType::f32}) {
    bench_dtype(b, dt);
    bench_optimizer(b, dt);
  }
  return report;
}

nlohmann::json to_json(const KernelReport& r) {
  nlohmann::json rows = nlohmann::json::array();
  for (const KernelResult& k : r.results)
    rows.push_back({{"kernel", k.kernel}, {"shape", k.shape}, {"dtype", k.dtype}, {"ms", k.ms},
                    {"gbytes_per_s", k.gbytes_per_s}, {"tflops", k.tflops}, {"pct_of_peak", k.pct_of_peak}});
  return {{"device", r.device}, {"peak_gbytes_per_s", r.peak_gbytes_per_s}, {"peak_tflops", r.peak_tflops},
          {"results", rows}};
}

void print_table(const KernelReport& r) {
  fmt::print("device {}: measured peaks {:.0f} GB/s (device copy), {:.1f} TFLOP/s (matmul)\n", r.device,
             r.peak_gbytes_per_s, r.peak_tflops);
  fmt::print("{:<24} {:<28} {:<5} {:>10} {:>10} {:>9} {:>7}\n", "kernel", "shape", "dtype", "time ms", "GB/s",
             "TFLOP/s", "% peak");
  for (const KernelResult& k : r.results)
    fmt::print("{:<24} {:<28} {:<5} {:>10.4f} {:>10.1f} {:>9.2f} {:>6.1f}%\n", k.kernel, k.shape, k.dtype, k.ms,
               k.gbytes_per_s, k.tflops, k.pct_of_peak);
}

int compare_with_baseline(const KernelReport& report, const std::string& baseline_path, double tolerance) {
  std::ifstream in(baseline_path);
  if (!in) throw UserError(fmt::format("cannot read baseline {}", baseline_path));
  nlohmann::json base = nlohmann::json::parse(in, nullptr, false);
  if (!base.is_object() || !base.contains("results"))
    throw UserError(fmt::format("{} is not a `tandem bench kernels --json` file", baseline_path));
  int regressions = 0;
  for (const KernelResult& k : report.results) {
    for (const auto& row : base["results"]) {
      if (row.value("kernel", "") != k.kernel || row.value("shape", "") != k.shape || row.value("dtype", "") != k.dtype)
        continue;
      double before = row.value("ms", 0.0);
      if (before > 0 && k.ms > before * (1 + tolerance)) {
        fmt::print("REGRESSION {} {} {}: {:.4f} ms, baseline {:.4f} ms (+{:.0f}%)\n", k.kernel, k.shape, k.dtype, k.ms,
                   before, 100 * (k.ms / before - 1));
        regressions++;
      }
    }
  }
  return regressions;
}

}  // namespace tandem::bench
