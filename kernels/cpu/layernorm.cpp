// CPU reference for LayerNorm. See kernels/layernorm.h.
// Row statistics are accumulated in fp64 so that this twin is a tight oracle
// for the fp32 CUDA kernels; everything stored is fp32.
#include <cmath>

#include "kernels/layernorm.h"
#include "kernels/residual.h"

namespace tandem::kernels::cpu {

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int64_t N, int64_t C, float eps) {
  for (int64_t n = 0; n < N; n++) {
    const float* x = inp + n * C;
    float* y = out + n * C;
    double sum = 0;
    for (int64_t c = 0; c < C; c++) sum += x[c];
    double m = sum / static_cast<double>(C);
    // Two passes (mean first, then squared deviations): no cancellation when
    // the mean is large against the spread.
    double sq = 0;
    for (int64_t c = 0; c < C; c++) {
      double d = x[c] - m;
      sq += d * d;
    }
    float mf = static_cast<float>(m);
    float s = static_cast<float>(1.0 / std::sqrt(sq / static_cast<double>(C) + static_cast<double>(eps)));
    for (int64_t c = 0; c < C; c++) y[c] = (x[c] - mf) * s * weight[c] + bias[c];
    mean[n] = mf;
    rstd[n] = s;
  }
}

// Literally the unfused pair, one row at a time (so the row is still in
// cache for the normalization): residual_add, then layernorm_forward on the
// residual just stored. Each row's a and b elements are read before its
// residual elements are written, so residual may alias a or b.
void residual_layernorm_forward(float* residual, float* out, float* mean, float* rstd, const float* a,
                                const float* b, const float* weight, const float* bias, int64_t N, int64_t C,
                                float eps) {
  for (int64_t n = 0; n < N; n++) {
    residual_add(residual + n * C, a + n * C, b + n * C, C);
    layernorm_forward(out + n * C, mean + n, rstd + n, residual + n * C, weight, bias, 1, C, eps);
  }
}

// With xhat = (x - mean) * rstd and g = weight * dout (per channel):
//   dinp = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))
//   dweight += dout * xhat,  dbias += dout
// Each row reads dout[c] before writing dinp[c], so dinp may alias dout.
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int64_t N, int64_t C) {
  for (int64_t n = 0; n < N; n++) {
    const float* x = inp + n * C;
    const float* dy = dout + n * C;
    float* dx = dinp + n * C;
    float m = mean[n], s = rstd[n];
    double g_sum = 0, gx_sum = 0;
    for (int64_t c = 0; c < C; c++) {
      float xhat = (x[c] - m) * s;
      float g = weight[c] * dy[c];
      g_sum += g;
      gx_sum += static_cast<double>(g) * xhat;
    }
    float g_mean = static_cast<float>(g_sum / static_cast<double>(C));
    float gx_mean = static_cast<float>(gx_sum / static_cast<double>(C));
    for (int64_t c = 0; c < C; c++) {
      float xhat = (x[c] - m) * s;
      float d = dy[c];
      dbias[c] += d;
      dweight[c] += d * xhat;
      dx[c] = (weight[c] * d - g_mean - xhat * gx_mean) * s;
    }
  }
}

}  // namespace tandem::kernels::cpu
