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
// loss reads).
inline std::vector<double> numerical_gradient(const Tensor& target, const std::function<double()>& loss,
                                              float eps = 1e-2f) {
  return numerical_gradient(target.data_as<float>(), target.numel(), loss, eps);
}

}  // namespace tandem::testing
