// Every module's backward against float64 finite differences of its forward.
#include <algorithm>
#include <map>
#include <random>

#include "models/cnn/resnet.h"
#include "runtime/layers.h"
#include "runtime/lstm_layer.h"
#include "runtime/vision_layers.h"
#include "runtime/gradcheck.h"

using namespace tandem;
using namespace tandem::testing;

namespace {

constexpr double kGradTol = 2e-2;  // relative, over the whole gradient

// Checks d(sum(module(x) * R))/dx and /dparams for a module on the CPU.
void check_module(Module& m, ParameterSet& params, const Tensor& x, uint64_t seed, bool input_grad = true) {
  Context ctx;
  ctx.seed = seed;
  params.allocate(Device::cpu(), DType::f32, seed);
  auto forward = [&] {
    ctx.rng_offset = 0;  // the same dropout mask on every evaluation
    return m.forward(x, ctx);
  };
  Tensor out = forward();
  std::vector<float> r = random_vector(out.numel(), seed + 7);
  Tensor dout = Tensor::from_vector(r, out.shape());
  params.zero_grads(Stream());
  Tensor dx = m.backward(dout, ctx);
  auto loss = [&] { return dot64(forward(), r); };

  if (input_grad) {
    std::vector<double> num = numerical_gradient(x, loss);
    INFO("input gradient");
    REQUIRE(rel_error(dx.to_vector(), num) <= kGradTol);
  }
  for (const Parameter& p : params.list()) {
    std::vector<double> num = numerical_gradient(p.value, loss);
    INFO("parameter " << p.name);
    REQUIRE(all_finite(p.grad.to_vector()));
    REQUIRE(rel_error(p.grad.to_vector(), num) <= kGradTol);
  }
}

}  // namespace

TEST_CASE("Linear backward matches finite differences", "[modules]") {
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  ParameterSet params;
  Linear m(params, "fc", 7, 5);
  check_module(m, params, random_tensor({3, 7}, seed), seed);
}

TEST_CASE("ReLU and GELU backward match finite differences", "[modules]") {
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  ParameterSet p1, p2;
  ReLU relu;
  GELU gelu;
  // Inputs away from ReLU's kink at 0, where the difference quotient is wrong.
  std::vector<float> v = random_vector(33, seed, 0.1f, 2.f);
  for (size_t i = 0; i < v.size(); i += 2) v[i] = -v[i];
  check_module(relu, p1, Tensor::from_vector(v, {3, 11}), seed);
  check_module(gelu, p2, random_tensor({3, 11}, seed, -3.f, 3.f), seed);
}

TEST_CASE("LayerNorm backward matches finite differences", "[modules]") {
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  ParameterSet params;
  LayerNorm m(params, "ln", 9);
  check_module(m, params, random_tensor({4, 9}, seed, -2.f, 2.f), seed);
}

TEST_CASE("Embedding backward matches finite differences", "[modules]") {
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  ParameterSet params;
  Embedding m(params, "wte", 11, 6);
  Tensor idx = make_int_tensor({3, 0, 3, 10, 7}, {5});  // a repeated index too
  check_module(m, params, idx, seed, /*input_grad=*/false);
}

TEST_CASE("Dropout backward matches finite differences with the same mask", "[modules]") {
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  ParameterSet params;
  Dropout m(0.3f);
  check_module(m, params, random_tensor({5, 13}, seed), seed);
}

TEST_CASE("Sequential backward chains its modules", "[modules]") {
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  ParameterSet params;
  Sequential net;
  net.add(std::make_unique<Linear>(params, "layers.0", 6, 8));
  net.add(std::make_unique<GELU>());
  net.add(std::make_unique<LayerNorm>(params, "layers.2", 8));
  net.add(std::make_unique<Linear>(params, "layers.3", 8, 4));
  check_module(net, params, random_tensor({3, 6}, seed), seed);
}

TEST_CASE("CrossEntropyLoss backward matches finite differences", "[modules]") {
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  Context ctx;
  Tensor logits = random_tensor({6, 5}, seed, -3.f, 3.f);
  Tensor targets = make_int_tensor({0, 4, -1, 2, 2, 1}, {6});  // one ignored row
  CrossEntropyLoss ce;
  auto loss = [&] {
    ce.forward(logits, targets, ctx);
    return ce.mean(ctx);
  };
  std::vector<double> num = numerical_gradient(logits, loss, 1e-2f);
  double value = loss();
  REQUIRE(std::isfinite(value));
  Tensor grad_tensor = ce.backward(ctx);
  REQUIRE(grad_tensor.data() == logits.data());  // written over the logits
  std::vector<float> grad = grad_tensor.to_vector();
  REQUIRE(rel_error(grad, num) <= kGradTol);
  for (int c = 0; c < 5; c++) REQUIRE(grad[2 * 5 + c] == 0.f);  // the ignored row
}

// ---- vision modules (runtime/vision_layers.h)

TEST_CASE("Conv2d backward matches finite differences", "[modules][vision]") {
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  ParameterSet params;
  Conv2d m(params, "layers.0", 3, 4, {.kernel = 3, .stride = 2, .padding = 1, .bias = true});
  check_module(m, params, random_tensor({2, 3, 7, 6}, seed), seed);
}

TEST_CASE("MaxPool2d and AvgPool2d backward match finite differences", "[modules][vision]") {
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  // Distinct values 0.05 apart: a +-1e-2 perturbation never changes which one is the max.
  std::vector<float> spaced(2 * 3 * 6 * 5);
  for (size_t i = 0; i < spaced.size(); i++) spaced[i] = 0.05f * static_cast<float>(i);
  std::shuffle(spaced.begin(), spaced.end(), std::mt19937_64(seed));
  ParameterSet none;
  Pool2d max_pool(Pool2d::Kind::max, 2);
  check_module(max_pool, none, Tensor::from_vector(spaced, {2, 3, 6, 5}), seed);
  ParameterSet none2;
  Pool2d avg_pool(Pool2d::Kind::avg, 3, 2, 1);
  check_module(avg_pool, none2, random_tensor({2, 3, 6, 5}, seed), seed);
}

TEST_CASE("A small CNN chains Reshape, Conv2d, pooling and Linear", "[modules][vision]") {
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  ParameterSet params;
  Sequential net;
  net.add(std::make_unique<Reshape>(std::vector<int64_t>{2, 6, 6}));
  net.add(std::make_unique<Conv2d>(params, "layers.1", 2, 3, Conv2dOptions{.kernel = 3, .stride = 1, .padding = 1}));
  net.add(std::make_unique<Pool2d>(Pool2d::Kind::avg, 2));
  net.add(std::make_unique<GlobalAvgPool>());
  net.add(std::make_unique<Linear>(params, "layers.4", 3, 5));
  Context ctx;
  Tensor x = random_tensor({4, 72}, seed);
  check_module(net, params, x, seed);
  REQUIRE(net.forward(x, ctx).shape() == Shape{4, 5});
}

TEST_CASE("BatchNorm2d: backward matches finite differences; eval uses the running statistics", "[modules][vision]") {
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  ParameterSet params;
  BatchNorm2d bn(params, "layers.0", 3);
  Tensor x = random_tensor({4, 3, 5, 2}, seed, -2.f, 3.f);
  check_module(bn, params, x, seed);  // training mode: the batch's statistics
  REQUIRE(params.buffer_list().size() == 2);
  REQUIRE(params.find("layers.0.weight").numel() == 3);

  // Every training forward moved running_mean a tenth of the way to the batch mean.
  std::vector<float> running = params.buffer_list()[0].value.to_vector();
  Context eval;
  eval.training = false;
  Tensor y = bn.forward(x, eval);
  std::vector<float> xs = x.to_vector(), ys = y.to_vector(), var = params.buffer_list()[1].value.to_vector();
  std::vector<float> w = params.find("layers.0.weight").value.to_vector(), b = params.find("layers.0.bias").value.to_vector();
  for (int64_t i = 0; i < x.numel(); i++) {
    int64_t c = (i / 10) % 3;
    double want = (xs[i] - running[c]) / std::sqrt(static_cast<double>(var[c]) + 1e-5) * w[c] + b[c];
    REQUIRE(std::fabs(ys[i] - want) <= 1e-5 * (1 + std::fabs(want)));
  }
}

TEST_CASE("LSTM (two layers, batch first) backward matches finite differences", "[modules][lstm]") {
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  ParameterSet params;
  Lstm m(params, "lstm", 3, 4, 2);
  REQUIRE(params.find("lstm.weight_ih_l1").shape == Shape{16, 4});
  check_module(m, params, random_tensor({2, 5, 3}, seed), seed);
}

// ---- the ResNet's residual block (models/cnn/resnet.h)

namespace {

// A residual block's gradient check. Two things make the per-tensor check
// above unfit here:
// - A ReLU behind a BatchNorm sees normalized values, many near 0, and every
//   perturbation moves all of them: some central differences straddle a
//   kink. So the BatchNorms' weights are set to 0.5 and their biases move
//   the ReLU inputs far from 0: bn1's to 2 (all pass), bn2's and the
//   downsample's to +3 on even channels and -3 on odd ones, so the block's
//   last ReLU passes whole channels and blocks others, and a branch fed the
//   wrong gradient (before or after that ReLU) shows.
// - Behind the next BatchNorm, which undoes most of a scale or shift, some
//   parameters (bn1's) have gradients near the finite differences' fp32
//   noise. So the parameter gradients are compared as one vector: a wiring
//   error (a lost branch, a wrong sum) shows there, noise on a tiny one
//   does not fail the test alone.
void check_block(Module& m, ParameterSet& params, const Tensor& x, uint64_t seed) {
  Context ctx;
  params.allocate(Device::cpu(), DType::f32, seed);
  for (const Parameter& p : params.list()) {
    bool first = p.name.find(".bn1.") != std::string::npos;
    bool last = p.name.find(".bn2.") != std::string::npos || p.name.find("downsample.1") != std::string::npos;
    float* v = p.value.data_as<float>();
    for (int64_t c = 0; (first || last) && c < p.value.numel(); c++)
      v[c] = !p.name.ends_with(".bias") ? 0.5f : first ? 2.f : c % 2 == 0 ? 3.f : -3.f;
  }
  Tensor out = m.forward(x, ctx);
  std::vector<float> r = random_vector(out.numel(), seed + 7);
  params.zero_grads(Stream());
  Tensor dx = m.backward(Tensor::from_vector(r, out.shape()), ctx);
  auto loss = [&] { return dot64(m.forward(x, ctx), r); };
  {
    INFO("input gradient");
    REQUIRE(rel_error(dx.to_vector(), numerical_gradient(x, loss)) <= kGradTol);
  }
  std::vector<float> analytic;
  std::vector<double> numeric;
  for (const Parameter& p : params.list()) {
    std::vector<float> g = p.grad.to_vector();
    std::vector<double> n = numerical_gradient(p.value, loss);
    analytic.insert(analytic.end(), g.begin(), g.end());
    numeric.insert(numeric.end(), n.begin(), n.end());
  }
  INFO("parameter gradients");
  REQUIRE(all_finite(analytic));
  REQUIRE(rel_error(analytic, numeric) <= kGradTol);
}

}  // namespace

TEST_CASE("BasicBlock backward matches finite differences, with and without a downsample", "[modules][vision]") {
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  ParameterSet down;
  models::BasicBlock widen(down, "layer2.0", 2, 3, /*stride=*/2);  // 1x1 conv + BN shortcut
  check_block(widen, down, random_tensor({3, 2, 5, 6}, seed), seed);
  REQUIRE(down.find("layer2.0.downsample.0.weight").shape == Shape{3, 2, 1, 1});
  REQUIRE(down.find("layer2.0.downsample.1.bias").numel() == 3);

  ParameterSet same;
  models::BasicBlock keep(same, "layer1.0", 3, 3, /*stride=*/1);  // identity shortcut
  check_block(keep, same, random_tensor({2, 3, 4, 5}, seed + 1), seed + 1);
  for (const Parameter& p : same.list()) REQUIRE(p.name.find("downsample") == std::string::npos);
}

TEST_CASE("The ResNet has torchvision's names and reports each parameter ready once", "[modules][vision]") {
  models::ResNetOptions o{.image_size = 12, .channels = {4, 6}, .blocks = 2, .classes = 5};
  models::ResNet net(o);
  std::vector<std::string> names;
  for (const Parameter& p : net.params.list()) names.push_back(p.name);
  for (const char* want : {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer1.1.bn2.bias",
                           "layer2.0.downsample.0.weight", "layer2.1.conv2.weight", "fc.weight", "fc.bias"})
    REQUIRE(std::find(names.begin(), names.end(), want) != names.end());
  REQUIRE(std::find(names.begin(), names.end(), "layer1.0.downsample.0.weight") == names.end());
  REQUIRE(net.params.find("layer2.0.conv1.weight").shape == Shape{6, 4, 3, 3});
  REQUIRE(net.params.find("fc.weight").shape == Shape{5, 6});

  // One training step: every parameter's gradient is reported exactly once
  // (the data-parallel reducer counts on it), and the logits are (N, classes).
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  net.params.allocate(Device::cpu(), DType::f32, seed);
  Context ctx;
  std::map<std::string, int> ready;
  ctx.grad_ready = [&](const Parameter& p) { ready[p.name]++; };
  Tensor logits = net.net.forward(random_tensor({3, 144}, seed), ctx);
  REQUIRE(logits.shape() == Shape{3, 5});
  net.params.zero_grads(Stream());
  net.net.backward(random_tensor({3, 5}, seed + 1), ctx);
  REQUIRE(ready.size() == names.size());
  for (const auto& [name, count] : ready) {
    INFO(name);
    REQUIRE(count == 1);
  }
}
