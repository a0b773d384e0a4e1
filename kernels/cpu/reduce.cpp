// CPU reference reductions: double accumulators in index order, rounded to
// f32 once at the end. See kernels/reduce.h.
#include "kernels/reduce.h"

namespace tandem::kernels::cpu {

void sum(float* out, const float* x, int64_t n) {
  double acc = 0;
  for (int64_t i = 0; i < n; i++) acc += x[i];
  out[0] = static_cast<float>(acc);
}

void norm_squared(float* out, const float* x, int64_t n) {
  double acc = 0;
  for (int64_t i = 0; i < n; i++) acc += static_cast<double>(x[i]) * x[i];
  out[0] = static_cast<float>(acc);
}

}  // namespace tandem::kernels::cpu
