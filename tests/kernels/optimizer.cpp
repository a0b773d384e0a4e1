// CPU SGD and AdamW against float64 implementations of PyTorch's update
// rules (torch.optim.SGD, torch.optim.AdamW, single-tensor path), several
// steps with fresh gradients, over momentum/Nesterov/weight decay/grad_scale.
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

// torch.optim.SGD, dampening 0, grad pre-multiplied by grad_scale. The
// buffer is created on the first step as a copy of d_p, as PyTorch does.
struct Sgd64 {
  std::vector<double> w, buf;
  bool has_buf = false;

  void step(const std::vector<float>& grad, const SgdOptions& o) {
    for (size_t i = 0; i < w.size(); i++) {
      double d_p = static_cast<double>(grad[i]) * o.grad_scale;
      if (o.weight_decay != 0) d_p += static_cast<double>(o.weight_decay) * w[i];
      if (o.momentum != 0) {
        buf[i] = has_buf ? static_cast<double>(o.momentum) * buf[i] + d_p : d_p;
        d_p = o.nesterov ? d_p + static_cast<double>(o.momentum) * buf[i] : buf[i];
      }
      w[i] -= static_cast<double>(o.lr) * d_p;
    }
    has_buf = true;
  }
};

// torch.optim.AdamW, grad pre-multiplied by grad_scale.
struct AdamW64 {
  std::vector<double> w, m, v;

  void step(const std::vector<float>& grad, const AdamWOptions& o) {
    double lr = o.lr, b1 = o.beta1, b2 = o.beta2, eps = o.eps, wd = o.weight_decay;
    double bc1 = 1 - std::pow(b1, static_cast<double>(o.step)), bc2 = 1 - std::pow(b2, static_cast<double>(o.step));
    for (size_t i = 0; i < w.size(); i++) {
      double g = static_cast<double>(grad[i]) * o.grad_scale;
      w[i] *= 1 - lr * wd;
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      w[i] -= lr / bc1 * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + eps);
    }
  }
};

std::vector<int64_t> sizes_with_zero() {
  std::vector<int64_t> sizes = kOddSizes;
  sizes.push_back(0);
  return sizes;
}

}  // namespace

TEST_CASE("cpu sgd_step matches float64 torch.optim.SGD", "[kernels][optimizer]") {
  for (int64_t n : sizes_with_zero()) {
    for (float momentum : {0.f, 0.9f}) {
      for (bool nesterov : {false, true}) {
        if (nesterov && momentum == 0.f) continue;
        for (float wd : {0.f, 0.05f}) {
          for (float grad_scale : {1.f, 0.5f}) {
            uint64_t seed = fresh_seed();
            SgdOptions opts{.lr = 0.1f, .momentum = momentum, .weight_decay = wd, .nesterov = nesterov,
                            .grad_scale = grad_scale};
            INFO("n=" << n << " momentum=" << momentum << " nesterov=" << nesterov << " wd=" << wd
                      << " grad_scale=" << grad_scale << " seed=" << seed);
            std::vector<float> w0 = random_vector(n, seed);
            Tensor params = Tensor::from_vector(w0, {n});
            // Without momentum the buffer may be undefined.
            Tensor buf = momentum != 0.f ? Tensor::zeros({n}, DType::f32, Device::cpu()) : Tensor();
            Sgd64 ref{.w = {w0.begin(), w0.end()}, .buf = std::vector<double>(n)};
            for (int s = 0; s < kSteps; s++) {
              std::vector<float> g = random_vector(n, seed + 1 + s);
              kernels::sgd_step(params, Tensor(), Tensor::from_vector(g, {n}), buf, opts, Stream());
              ref.step(g, opts);
            }
            REQUIRE(all_finite(params.to_vector()));
            REQUIRE(unit_scaled_error(params.to_vector(), ref.w) <= 1e-6);
            if (momentum != 0.f) REQUIRE(unit_scaled_error(buf.to_vector(), ref.buf) <= 1e-6);
          }
        }
      }
    }
  }
}

TEST_CASE("cpu adamw_step matches float64 torch.optim.AdamW", "[kernels][optimizer]") {
  for (int64_t n : sizes_with_zero()) {
    for (float wd : {0.f, 0.1f}) {
      for (float grad_scale : {1.f, 0.25f}) {
        uint64_t seed = fresh_seed();
        INFO("n=" << n << " wd=" << wd << " grad_scale=" << grad_scale << " seed=" << seed);
        std::vector<float> w0 = random_vector(n, seed);
        Tensor params = Tensor::from_vector(w0, {n});
        Tensor m = Tensor::zeros({n}, DType::f32, Device::cpu()), v = Tensor::zeros({n}, DType::f32, Device::cpu());
        AdamW64 ref{.w = {w0.begin(), w0.end()}, .m = std::vector<double>(n), .v = std::vector<double>(n)};
        for (int s = 1; s <= kSteps; s++) {
          AdamWOptions opts{.lr = 0.01f, .weight_decay = wd, .step = s, .grad_scale = grad_scale};
          std::vector<float> g = random_vector(n, seed + s);
          kernels::adamw_step(params, Tensor(), Tensor::from_vector(g, {n}), m, v, opts, Stream());
          ref.step(g, opts);
        }
        REQUIRE(all_finite(params.to_vector()));
        REQUIRE(unit_scaled_error(params.to_vector(), ref.w) <= 1e-6);
        REQUIRE(unit_scaled_error(m.to_vector(), ref.m) <= 1e-6);
        REQUIRE(rel_error(v.to_vector(), ref.v) <= 1e-6);  // v > 0: no cancellation
      }
    }
  }
}

TEST_CASE("cpu optimizers check their options and tensors", "[kernels][optimizer]") {
  Tensor p = Tensor::zeros({8}, DType::f32, Device::cpu()), g = Tensor::zeros({8}, DType::f32, Device::cpu());
  Tensor s = Tensor::zeros({8}, DType::f32, Device::cpu()), short_state = Tensor::zeros({7}, DType::f32, Device::cpu());
  REQUIRE_THROWS(kernels::sgd_step(p, Tensor(), g, Tensor(), {.lr = 0.1f, .nesterov = true}, Stream()));
  REQUIRE_THROWS(kernels::sgd_step(p, Tensor(), g, Tensor(), {.lr = 0.1f, .momentum = 0.9f}, Stream()));
  REQUIRE_THROWS(kernels::sgd_step(p, Tensor(), g, short_state, {.lr = 0.1f, .momentum = 0.9f}, Stream()));
  REQUIRE_THROWS(kernels::sgd_step(p, s, g, Tensor(), {.lr = 0.1f}, Stream()));  // no master on the CPU
  REQUIRE_THROWS(kernels::adamw_step(p, Tensor(), g, s, s, {.lr = 0.1f}, Stream()));  // step 0
  REQUIRE_THROWS(kernels::adamw_step(p, Tensor(), g, s, s, {.lr = 0.1f, .beta1 = 1.f, .step = 1}, Stream()));
  Tensor s2 = Tensor::zeros({8}, DType::f32, Device::cpu());
  REQUIRE_NOTHROW(kernels::adamw_step(p, Tensor(), g, s, s2, {.lr = 0.1f, .step = 1}, Stream()));
}
