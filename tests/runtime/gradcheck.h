// Finite-difference gradient checks for modules. The modules compute in
// fp32; the check perturbs one input at a time by +-eps, evaluates the loss
// L = sum(output * R) in float64, and divides by the perturbation actually
// applied (after fp32 rounding). The result is compared with the analytic
// gradient as a relative error over the whole vector.
#pragma once

#include <functional>

#include "support/testing.h"

namespace tandem::testing {

// L = sum(out * r), accumulated in float64.
inline double dot64(const Tensor& out, const std::vector<float>& r) {
  std::vector<float> v = out.to_vector();
  REQUIRE(v.size() == r.size());
  double s = 0;
  for (size_t i = 0; i < v.size(); i++) s += static_cast<double>(v[i]) * r[i];
  return s;
}

// d loss / d target[i] for every element of `target` (a CPU f32 tensor the
// loss reads), by central differences.
inline std::vector<double> numerical_gradient(const Tensor& target, const std::function<double()>& loss,
                                              float eps = 1e-2f) {
  float* p = target.data_as<float>();
  std::vector<double> grad(target.numel());
  for (int64_t i = 0; i < target.numel(); i++) {
    float saved = p[i];
    float up = saved + eps, down = saved - eps;
    p[i] = up;
    double l_up = loss();
    p[i] = down;
    double l_down = loss();
    p[i] = saved;
    grad[i] = (l_up - l_down) / (static_cast<double>(up) - static_cast<double>(down));
  }
  return grad;
}

}  // namespace tandem::testing
