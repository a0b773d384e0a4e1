// SGD (momentum, Nesterov, weight decay) and AdamW with PyTorch's update
// rules (torch.optim.SGD with dampening 0, torch.optim.AdamW), one fused
// elementwise pass over a flat parameter buffer.
//
// Note [Master weights]: with f32 params, `params` is the master copy and
// `master` is undefined. With bf16 params (CUDA only) the f32 `master` holds
// the true value: the update reads and writes master and then stores
// params = bf16(master), rounded to nearest even, so small updates are not
// lost to bf16 rounding step after step. Optimizer state (momentum_buf, m,
// v) is always f32.
//
// grad_scale multiplies the gradient before anything else: the inverse loss
// scale, a clipping factor, or 1 / accumulation steps, with no separate
// pass over the gradients.
#pragma once

#include <cmath>
#include <string>

#include "kernels/common.h"

namespace tandem::kernels {

struct SgdOptions {
  float lr;
  float momentum = 0;      // 0: plain SGD, no buffer
  float weight_decay = 0;  // L2 penalty added to the gradient (coupled, as torch.optim.SGD)
  bool nesterov = false;   // needs momentum > 0
  float grad_scale = 1;
};

struct AdamWOptions {
  float lr;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.01f;  // decoupled: w *= 1 - lr * weight_decay
  int64_t step = 0;            // 1-based count of this step, for bias correction (required)
  float grad_scale = 1;
};

// AdamW's per-step scalars, computed once on the host in double as PyTorch
// computes them in Python, then rounded to f32; both twins use these.
struct AdamWScalars {
  float decay;                  // 1 - lr * weight_decay
  float one_minus_beta1;        // 1 - beta1
  float one_minus_beta2;        // 1 - beta2
  float step_size;              // lr / (1 - beta1^step)
  float bias_correction2_sqrt;  // sqrt(1 - beta2^step)
};

inline AdamWScalars adamw_scalars(const AdamWOptions& o) {
  double lr = o.lr, beta1 = o.beta1, beta2 = o.beta2, step = static_cast<double>(o.step);
  return {
      .decay = static_cast<float>(1.0 - lr * o.weight_decay),
      .one_minus_beta1 = static_cast<float>(1.0 - beta1),
      .one_minus_beta2 = static_cast<float>(1.0 - beta2),
      .step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, step))),
      .bias_correction2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, step))),
  };
}

namespace cpu {
// params, grads, momentum_buf: (n) f32; momentum_buf may be null when momentum == 0.
void sgd_step(float* params, const float* grads, float* momentum_buf, int64_t n, const SgdOptions& opts);
// params, grads, m, v: (n) f32.
void adamw_step(float* params, const float* grads, float* m, float* v, int64_t n, const AdamWOptions& opts);
}  // namespace cpu

namespace cuda {
// params, grads: (n) of `dtype`; master: (n) f32 or null (f32 params only);
// state: (n) f32.
void sgd_step(void* params, float* master, const void* grads, float* momentum_buf, int64_t n, DType dtype,
              const SgdOptions& opts, CUstream_st* stream);
void adamw_step(void* params, float* master, const void* grads, float* m, float* v, int64_t n, DType dtype,
                const AdamWOptions& opts, CUstream_st* stream);
}  // namespace cuda

namespace detail {

inline void check_optimizer_tensors(const Tensor& params, const Tensor& master, const Tensor& grads,
                                    const char* op) {
  check_same_float(grads, params, op);
  check_numel(grads, params.numel(), op);
  if (!master.defined()) {
    TANDEM_CHECK(params.dtype() == DType::f32, std::string(op) + ": " + dtype_name(params.dtype()) +
                                                   " params need an f32 master copy");
    return;
  }
  TANDEM_CHECK(params.device().is_cuda(),
               std::string(op) + ": a master copy is CUDA only; CPU params are f32 and are the master");
  TANDEM_CHECK(master.dtype() == DType::f32, std::string(op) + ": the master copy must be f32");
  check_same_device(master, params, op);
  check_numel(master, params.numel(), op);
}

inline void check_state(const Tensor& state, const Tensor& params, const char* op, const char* name) {
  TANDEM_CHECK(state.defined() && state.dtype() == DType::f32,
               std::string(op) + ": " + name + " must be a defined f32 tensor");
  check_same_device(state, params, op);
  check_numel(state, params.numel(), op);
}

inline float* data_or_null(const Tensor& t) { return t.defined() ? t.data_as<float>() : nullptr; }

}  // namespace detail

// One SGD step, in place: g = grad * grad_scale + weight_decay * w;
// buf = momentum * buf + g; step = nesterov ? g + momentum * buf : buf;
// w -= lr * step. momentum_buf starts zeroed (so the first step sets buf = g,
// as PyTorch's lazily created buffer) and may be undefined when momentum == 0.
inline void sgd_step(const Tensor& params, const Tensor& master, const Tensor& grads, const Tensor& momentum_buf,
                     const SgdOptions& opts, const Stream& stream) {
  const char* op = "sgd_step";
  detail::check_optimizer_tensors(params, master, grads, op);
  TANDEM_CHECK(opts.lr >= 0.f && opts.momentum >= 0.f && opts.weight_decay >= 0.f,
               "sgd_step: lr, momentum and weight_decay must be >= 0");
  TANDEM_CHECK(!opts.nesterov || opts.momentum > 0.f, "sgd_step: Nesterov momentum needs momentum > 0");
  if (opts.momentum != 0.f) detail::check_state(momentum_buf, params, op, "momentum_buf");
  float* buf = opts.momentum != 0.f ? momentum_buf.data_as<float>() : nullptr;
  int64_t n = params.numel();
  if (params.device().is_cpu()) {
    cpu::sgd_step(params.data_as<float>(), grads.data_as<float>(), buf, n, opts);
  } else {
    TANDEM_CUDA_ONLY(cuda::sgd_step(params.data(), detail::data_or_null(master), grads.data(), buf, n,
                                    params.dtype(), opts, stream.cuda()));
  }
}

// One AdamW step, in place: w *= 1 - lr * wd; g = grad * grad_scale;
// m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
// m and v start zeroed.
inline void adamw_step(const Tensor& params, const Tensor& master, const Tensor& grads, const Tensor& m,
                       const Tensor& v, const AdamWOptions& opts, const Stream& stream) {
  const char* op = "adamw_step";
  detail::check_optimizer_tensors(params, master, grads, op);
  detail::check_state(m, params, op, "m");
  detail::check_state(v, params, op, "v");
  TANDEM_CHECK(opts.step >= 1, "adamw_step: step is 1-based, got " + std::to_string(opts.step));
  TANDEM_CHECK(opts.lr >= 0.f && opts.eps >= 0.f && opts.weight_decay >= 0.f,
               "adamw_step: lr, eps and weight_decay must be >= 0");
  TANDEM_CHECK(opts.beta1 >= 0.f && opts.beta1 < 1.f && opts.beta2 >= 0.f && opts.beta2 < 1.f,
               "adamw_step: betas must be in [0, 1)");
  int64_t n = params.numel();
  if (params.device().is_cpu()) {
    cpu::adamw_step(params.data_as<float>(), grads.data_as<float>(), m.data_as<float>(), v.data_as<float>(), n,
                    opts);
  } else {
    TANDEM_CUDA_ONLY(cuda::adamw_step(params.data(), detail::data_or_null(master), grads.data(),
                                      m.data_as<float>(), v.data_as<float>(), n, params.dtype(), opts,
                                      stream.cuda()));
  }
}

}  // namespace tandem::kernels
