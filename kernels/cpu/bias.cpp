// CPU reference for the bias forward and backward. See kernels/bias.h.
#include <algorithm>

#include "kernels/bias.h"

namespace tandem::kernels::cpu {

namespace {
// Columns summed together in bias_backward: their float64 accumulators live
// on the stack (no allocation), and a row strip of this width stays in cache.
constexpr int64_t kColumnBlock = 64;
}  // namespace

void bias_add(float* out, const float* bias, int64_t N, int64_t C) {
  for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++) out[n * C + c] += bias[c];
}

// Column sums in float64, walking the rows in order (row-major friendly),
// one block of columns at a time.
void bias_backward(float* dbias, const float* dout, int64_t N, int64_t C) {
  for (int64_t c0 = 0; c0 < C; c0 += kColumnBlock) {
    int64_t width = std::min(kColumnBlock, C - c0);
    double sum[kColumnBlock] = {};
    for (int64_t n = 0; n < N; n++)
      for (int64_t j = 0; j < width; j++) sum[j] += dout[n * C + c0 + j];
    for (int64_t j = 0; j < width; j++) dbias[c0 + j] = static_cast<float>(dbias[c0 + j] + sum[j]);
  }
}

}  // namespace tandem::kernels::cpu
