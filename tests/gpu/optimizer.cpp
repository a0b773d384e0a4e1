// CUDA SGD and AdamW against the CPU twin over several steps: f32 params
// (which are their own master) and bf16 params with an f32 master, where the
// master must track the CPU's f32 params and the bf16 params must be exactly
// the master rounded to nearest even.
#include <algorithm>
#include <cmath>

#include "kernels/optimizer.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
using kernels::AdamWOptions;
using kernels::SgdOptions;

namespace {

constexpr int kSteps = 5;

constexpr double kTol = 1e-5;
const std::vector<int64_t> kSizes = {1, 7, 33, 1000, (1 << 20) + 3};

enum class Kind { sgd, adamw };

struct Config {
  Kind kind;
  SgdOptions sgd{.lr = 0.1f};
  AdamWOptions adamw{.lr = 0.01f};
};

const std::vector<Config> kConfigs = {
    {.kind = Kind::sgd, .sgd = {.lr = 0.1f}},
    {.kind = Kind::sgd, .sgd = {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.05f, .grad_scale = 0.5f}},
    {.kind = Kind::sgd, .sgd = {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.05f, .nesterov = true}},
    {.kind = Kind::sgd, .sgd = {.lr = 0.05f, .momentum = 0.5f, .nesterov = true, .grad_scale = 0.25f}},
    {.kind = Kind::adamw, .adamw = {.lr = 0.01f, .weight_decay = 0.1f}},
    {.kind = Kind::adamw, .adamw = {.lr = 0.01f, .beta2 = 0.99f, .weight_decay = 0.f, .grad_scale = 0.25f}},
};

// Parameters and state on one device. On the GPU with bf16, `master` holds
// the f32 truth; otherwise `params` does.
struct State {
  Tensor params, master, state1, state2;  // state1: momentum or m; state2: v

  void step(const Config& c, int step, const Tensor& grads, const Stream& stream) {
    if (c.kind == Kind::sgd) {
      kernels::sgd_step(params, master, grads, state1, c.sgd, stream);
    } else {
      AdamWOptions opts = c.adamw;
      opts.step = step;
      kernels::adamw_step(params, master, grads, state1, state2, opts, stream);
    }
  }
};

State make_state(const Config& c, const std::vector<float>& w0, DType dtype, Device device) {
  int64_t n = static_cast<int64_t>(w0.size());
  State s;
  s.params = make_tensor(w0, {n}, dtype, device);
  if (dtype != DType::f32) s.master = make_tensor(w0, {n}, DType::f32, device);
  bool needs_state1 = c.kind == Kind::adamw || c.sgd.momentum != 0.f;
  if (needs_state1) s.state1 = Tensor::zeros({n}, DType::f32, device);
  if (c.kind == Kind::adamw) s.state2 = Tensor::zeros({n}, DType::f32, device);
  return s;
}

}  // namespace

TEST_CASE("cuda optimizers match the cpu twin over several steps", "[gpu][optimizer]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (size_t ci = 0; ci < kConfigs.size(); ci++) {
      const Config& c = kConfigs[ci];
      for (int64_t n : kSizes) {
        uint64_t seed = fresh_seed();
        INFO("dtype=" << dtype_name(dtype) << " config=" << ci << " n=" << n << " seed=" << seed);
        // The f32 starting values are the master; bf16 params start at their rounding.
        std::vector<float> w0 = random_vector(n, seed);
        State cpu = make_state(c, w0, DType::f32, Device::cpu());
        State dev = make_state(c, w0, dtype, gpu);
        for (int s = 1; s <= kSteps; s++) {
          std::vector<float> g = random_vector(n, seed + s);
          if (dtype == DType::bf16) g = rounded_to_bf16(g);  // the gradients both sides see
          Tensor ggrads = make_tensor(g, {n}, dtype, gpu);
          cpu.step(c, s, Tensor::from_vector(g, {n}), Stream());
          dev.step(c, s, ggrads, stream);
          stream.synchronize();  // before ggrads goes back to the allocator
        }

        std::vector<float> want = cpu.params.to_vector();
        std::vector<float> truth = dtype == DType::f32 ? dev.params.to_vector() : dev.master.to_vector();
        REQUIRE(all_finite(truth));
        REQUIRE(unit_scaled_error(truth, want) <= kTol);
        if (dev.state1.defined()) REQUIRE(unit_scaled_error(dev.state1.to_vector(), cpu.state1.to_vector()) <= kTol);
        // v > 0: no cancellation, a plain relative error.
        if (dev.state2.defined()) REQUIRE(rel_error(dev.state2.to_vector(), cpu.state2.to_vector()) <= kTol);
        if (dtype == DType::bf16) {
          // bf16 params are exactly the master rounded to nearest even.
          REQUIRE(dev.params.to_vector() == rounded_to_bf16(truth));
        }
      }
    }
  }
}

TEST_CASE("cuda optimizers refuse bf16 params without a master", "[gpu][optimizer]") {
  Device gpu = Device::cuda(0);
  Tensor p = Tensor::zeros({8}, DType::bf16, gpu), g = Tensor::zeros({8}, DType::bf16, gpu);
  REQUIRE_THROWS(kernels::sgd_step(p, Tensor(), g, Tensor(), {.lr = 0.1f}, Stream::default_for(gpu)));
  Tensor m = Tensor::zeros({8}, DType::f32, gpu), v = Tensor::zeros({8}, DType::f32, gpu);
  REQUIRE_THROWS(kernels::adamw_step(p, Tensor(), g, m, v, {.lr = 0.1f, .step = 1}, Stream::default_for(gpu)));
}
