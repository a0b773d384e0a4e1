// GPT-2 on CUDA against the CPU model (which tests/runtime/gpt2.cpp checks
// against float64): one training step from the same weights and tokens
// gives the same loss and gradients, in f32 and within bf16's tolerance in
// bf16; and two GPU steps are bitwise identical.
#include <cmath>

#include "models/gpt2/gpt2.h"
#include "runtime/layers.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

namespace {

// Odd sizes: T and V not multiples of a warp, HS = 24.
models::Gpt2Config config() { return {.vocab_size = 97, .n_positions = 40, .n_layer = 2, .n_head = 3, .n_embd = 72}; }
constexpr int64_t B = 3, T = 37;

struct Step {
  double loss;
  std::vector<std::vector<float>> grads;  // per parameter, f32
};

// Values at GPT-2's scale (its init) but with LayerNorm gains spread around 1.
Tensor weights(const models::Gpt2& model, uint64_t seed) {
  std::vector<float> v = random_vector(model.params.numel(), seed, -0.1f, 0.1f);
  for (const Parameter& p : model.params.list())
    if (p.name.find("ln_") != std::string::npos && p.name.ends_with(".weight"))
      for (int64_t i = 0; i < p.numel(); i++) v[p.offset + i] += 1.f;
  return Tensor::from_vector(v, {model.params.numel()});
}

Step one_step(Device device, DType dtype, const Tensor& initial, const std::vector<int32_t>& inputs,
              const std::vector<int32_t>& targets) {
  models::Gpt2 model(config());
  model.params.allocate(device, dtype, initial);
  Context ctx;
  ctx.device = device;
  ctx.dtype = dtype;
  ctx.stream = Stream::create(device);
  CrossEntropyLoss loss_fn;
  Tensor logits = model.forward(make_int_tensor(inputs, {B, T}, device), ctx);
  loss_fn.forward(logits.reshape({B * T, config().vocab_size}), make_int_tensor(targets, {B * T}, device), ctx);
  model.backward(loss_fn.backward(ctx), ctx);
  Step s{loss_fn.mean(ctx), {}};
  ctx.stream.synchronize();
  for (const Parameter& p : model.params.list()) s.grads.push_back(p.grad.to_vector());
  return s;
}

// max |a - b| over max |b|: the error on the scale of the gradient.
double scaled_max_error(const std::vector<float>& a, const std::vector<float>& b) {
  double err = 0, scale = 1e-12;
  for (size_t i = 0; i < a.size(); i++) {
    err = std::max(err, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  return err / scale;
}

}  // namespace

TEST_CASE("cuda GPT-2: a training step matches the cpu model", "[gpu][gpt2]") {
  uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  models::Gpt2 shape(config());
  Tensor initial = weights(shape, seed);
  std::vector<int32_t> inputs = random_indices(B * T, config().vocab_size, Spread::uniform, seed + 1);
  std::vector<int32_t> targets = random_indices(B * T, config().vocab_size, Spread::uniform, seed + 2);
  Step cpu = one_step(Device::cpu(), DType::f32, initial, inputs, targets);

  struct Tolerance {
    DType dtype;
    double loss, grad;
  };
  for (Tolerance tol : {Tolerance{DType::f32, 1e-5, 1e-3}, Tolerance{DType::bf16, 2e-2, 1e-1}}) {
    INFO(dtype_name(tol.dtype));
    Step gpu = one_step(Device::cuda(0), tol.dtype, initial, inputs, targets);
    REQUIRE(std::isfinite(gpu.loss));
    REQUIRE(std::fabs(gpu.loss - cpu.loss) <= tol.loss * cpu.loss);
    for (size_t i = 0; i < cpu.grads.size(); i++) {
      INFO("parameter " << shape.params.list()[i].name);
      REQUIRE(all_finite(gpu.grads[i]));
      REQUIRE(scaled_max_error(gpu.grads[i], cpu.grads[i]) <= tol.grad);
    }
  }
}

TEST_CASE("cuda GPT-2: the same step twice gives bitwise-identical gradients", "[gpu][gpt2]") {
  uint64_t seed = fresh_seed();
  models::Gpt2 shape(config());
  Tensor initial = weights(shape, seed);
  std::vector<int32_t> inputs = random_indices(B * T, config().vocab_size, Spread::hot, seed + 1);
  std::vector<int32_t> targets = random_indices(B * T, config().vocab_size, Spread::uniform, seed + 2);
  for (DType dtype : {DType::f32, DType::bf16}) {
    INFO(dtype_name(dtype));
    Step a = one_step(Device::cuda(0), dtype, initial, inputs, targets);
    Step b = one_step(Device::cuda(0), dtype, initial, inputs, targets);
    REQUIRE(a.loss == b.loss);
    REQUIRE(a.grads == b.grads);
  }
}
