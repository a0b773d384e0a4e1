// CPU reference optimizers: fp32 loops, the formulas of kernels/optimizer.h
// written out once per element.
#include "kernels/optimizer.h"

#include <cmath>

namespace tandem::kernels::cpu {

void sgd_step(float* params, const float* grads, float* momentum_buf, int64_t n, const SgdOptions& opts) {
  for (int64_t i = 0; i < n; i++) {
    float w = params[i];
    float g = grads[i] * opts.grad_scale;
    if (opts.weight_decay != 0.f) g += opts.weight_decay * w;
    float step = g;
    if (opts.momentum != 0.f) {
      float buf = opts.momentum * momentum_buf[i] + g;
      momentum_buf[i] = buf;
      step = opts.nesterov ? g + opts.momentum * buf : buf;
    }
    params[i] = w - opts.lr * step;
  }
}

void adamw_step(float* params, const float* grads, float* m, float* v, int64_t n, const AdamWOptions& opts) {
  AdamWScalars s = adamw_scalars(opts);
  for (int64_t i = 0; i < n; i++) {
    float w = params[i] * s.decay;
    float g = grads[i] * opts.grad_scale;
    float mi = opts.beta1 * m[i] + s.one_minus_beta1 * g;
    float vi = opts.beta2 * v[i] + s.one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    float denom = std::sqrt(vi) / s.bias_correction2_sqrt + opts.eps;
    params[i] = w - s.step_size * (mi / denom);
  }
}

}  // namespace tandem::kernels::cpu
