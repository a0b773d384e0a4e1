// SGD with momentum and AdamW over the flat parameter buffer. State lives in
// flat fp32 buffers of the same layout (so a slice of the parameters is the
// same slice of every state buffer). When parameters are stored in bf16 the
// optimizer also keeps the fp32 master weights: it updates the master and
// writes the rounded value back into the parameter buffer.
#pragma once

#include <map>
#include <string>

#include "runtime/core/tensor.h"
#include "runtime/parameters.h"

namespace tandem {

struct OptimizerConfig {
  std::string name = "adamw";  // "adamw" or "sgd"
  float weight_decay = 0.f;
  float momentum = 0.9f;  // sgd
  bool nesterov = false;  // sgd
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;  // adamw
};

class Optimizer {
 public:
  // Builds the state for `params` (allocated) and seeds the master copy
  // from `initial`, the fp32 values the parameters were allocated from.
  Optimizer(const ParameterSet& params, const OptimizerConfig& config, const Tensor& initial);

  // One update with learning rate `lr`; gradients are multiplied by
  // `grad_scale` first (gradient clipping).
  void step(float lr, float grad_scale, const Stream& stream);
  int64_t steps_taken() const { return step_; }

  // fp32 weights: the master copy, or the parameters themselves.
  const Tensor& weights() const { return master_.defined() ? master_ : params_.values(); }
  // Named state buffers for checkpoints: "master", "exp_avg", ...
  std::map<std::string, Tensor> state() const;
  // Restores state() from a checkpoint (CPU tensors of the same names and
  // sizes; UserError naming the first that differs) and the step count.
  void load_state(const std::map<std::string, Tensor>& saved, int64_t steps_taken);
  void set_steps_taken(int64_t steps) { step_ = steps; }

 private:
  const ParameterSet& params_;
  OptimizerConfig config_;
  Tensor master_;       // f32, only when the parameters are not f32
  Tensor exp_avg_;      // adamw m
  Tensor exp_avg_sq_;   // adamw v
  Tensor momentum_;     // sgd
  int64_t step_ = 0;
};

// Learning rate at `step` (0-based): linear warmup over `warmup_steps`, then
// cosine decay from lr to lr * min_lr_ratio at `total_steps` (or constant).
struct LrSchedule {
  float lr = 1e-3f;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  float min_lr_ratio = 0.f;
  bool cosine = true;

  float at(int64_t step) const;
};

// The L2 norm of all gradients, and the scale that brings it to at most
// `max_norm` (1 when max_norm <= 0 or the norm is already below it).
struct ClipResult {
  double norm;
  float scale;
};

// Gradient clipping by global norm, as torch.nn.utils.clip_grad_norm_. The
// reduction's output and scratch buffers are made once, not every step.
class GradClipper {
 public:
  explicit GradClipper(Device device);
  // Reads the norm back to the host, so it synchronizes `stream`.
  ClipResult compute(const ParameterSet& params, float max_norm, const Stream& stream);

 private:
  Tensor total_, scratch_;
};

}  // namespace tandem
