// CPU reference for dropout: one Philox draw per element, in index order.
// See kernels/dropout.h.
#include "kernels/dropout.h"
#include "runtime/core/philox.h"

namespace tandem::kernels::cpu {

void dropout_forward(float* out, const float* inp, int64_t n, const DropoutOptions& opts) {
  float scale = dropout_scale(opts);
  for (int64_t i = 0; i < n; i++) {
    bool keep = philox_uniform(opts.seed, opts.offset + static_cast<uint64_t>(i)) >= opts.p;
    out[i] = keep ? inp[i] * scale : 0.f;
  }
}

// The gradient of a masked scale is the same masked scale.
void dropout_backward(float* dinp, const float* dout, int64_t n, const DropoutOptions& opts) {
  dropout_forward(dinp, dout, n, opts);
}

}  // namespace tandem::kernels::cpu
