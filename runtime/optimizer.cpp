#include "runtime/optimizer.h"

#include <cmath>

#include "kernels/optimizer.h"
#include "kernels/reduce.h"

namespace tandem {

Optimizer::Optimizer(const ParameterSet& params, const OptimizerConfig& config, const Tensor& initial)
    : params_(params), config_(config) {
  TANDEM_CHECK(params.allocated(), "Optimizer needs allocated parameters");
  if (config.name != "adamw" && config.name != "sgd")
    throw UserError("unknown optimizer '" + config.name + "' (expected adamw or sgd)");
  Device device = params.values().device();
  int64_t n = params.numel();
  if (params.values().dtype() != DType::f32)
    master_ = initial.to(device);
  if (config.name == "adamw") {
    exp_avg_ = Tensor::zeros({n}, DType::f32, device);
    exp_avg_sq_ = Tensor::zeros({n}, DType::f32, device);
  } else if (config.momentum != 0.f) {
    momentum_ = Tensor::zeros({n}, DType::f32, device);
  }
}

void Optimizer::step(float lr, float grad_scale, const Stream& stream) {
  step_++;
  if (config_.name == "adamw") {
    kernels::AdamWOptions opts;
    opts.lr = lr;
    opts.beta1 = config_.beta1;
    opts.beta2 = config_.beta2;
    opts.eps = config_.eps;
    opts.weight_decay = config_.weight_decay;
    opts.step = step_;
    opts.grad_scale = grad_scale;
    kernels::adamw_step(params_.values(), master_, params_.grads(), exp_avg_, exp_avg_sq_, opts, stream);
  } else {
    kernels::SgdOptions opts;
    opts.lr = lr;
    opts.momentum = config_.momentum;
    opts.weight_decay = config_.weight_decay;
    opts.nesterov = config_.nesterov;
    opts.grad_scale = grad_scale;
    kernels::sgd_step(params_.values(), master_, params_.grads(), momentum_, opts, stream);
  }
}

std::map<std::string, Tensor> Optimizer::state() const {
  std::map<std::string, Tensor> out;
  if (master_.defined()) out["master"] = master_;
  if (exp_avg_.defined()) out["exp_avg"] = exp_avg_;
  if (exp_avg_sq_.defined()) out["exp_avg_sq"] = exp_avg_sq_;
  if (momentum_.defined()) out["momentum"] = momentum_;
  return out;
}

void Optimizer::load_state(const std::map<std::string, Tensor>& saved, int64_t steps_taken) {
  for (auto& [name, buffer] : state()) {
    auto it = saved.find(name);
    if (it == saved.end() || it->second.dtype() != buffer.dtype() || it->second.numel() != buffer.numel())
      throw UserError("the checkpoint's optimizer state has no matching '" + name + "' (" + config_.name +
                      " with " + std::to_string(buffer.numel()) + " values): was it written with another optimizer?");
    buffer.copy_from(it->second);
  }
  if (params_.values().device().is_cuda()) Stream::default_for(params_.values().device()).synchronize();
  step_ = steps_taken;
}

float LrSchedule::at(int64_t step) const {
  if (step < warmup_steps) return lr * static_cast<float>(step + 1) / static_cast<float>(warmup_steps);
  if (!cosine) return lr;
  int64_t decay_steps = total_steps - warmup_steps;
  if (decay_steps <= 0) return lr;
  double progress = std::min(1.0, static_cast<double>(step - warmup_steps) / static_cast<double>(decay_steps));
  double coeff = 0.5 * (1.0 + std::cos(M_PI * progress));  // 1 -> 0
  double min_lr = static_cast<double>(lr) * min_lr_ratio;
  return static_cast<float>(min_lr + coeff * (lr - min_lr));
}

GradClipper::GradClipper(Device device)
    : total_(Tensor::empty({1}, DType::f32, device)),
      scratch_(device.is_cuda() ? Tensor::empty({kernels::kReduceScratchElems}, DType::f32, device) : Tensor()) {}

ClipResult GradClipper::compute(const ParameterSet& params, float max_norm, const Stream& stream) {
  kernels::norm_squared(total_, params.grads(), scratch_, stream);
  stream.synchronize();
  double norm = std::sqrt(static_cast<double>(total_.to_vector()[0]));
  float scale = 1.f;
  // The same rule as torch.nn.utils.clip_grad_norm_: scale = max / (norm + 1e-6).
  if (max_norm > 0.f && norm > max_norm) scale = static_cast<float>(max_norm / (norm + 1e-6));
  return {norm, scale};
}

}  // namespace tandem
