// CPU reference for BatchNorm. See kernels/batchnorm.h.
// Channel statistics are accumulated in fp64 so that this twin is a tight
// oracle for the CUDA kernels (kernels/cuda/batchnorm.cu); everything stored is fp32.
// Element (n, c, i) of an (N, C, HW) activation is at (n * C + c) * HW + i:
// a channel is N runs of HW contiguous values.
#include <cmath>

#include "kernels/batchnorm.h"

namespace tandem::kernels::cpu {

void batchnorm_forward_train(float* out, float* save_mean, float* save_rstd, float* running_mean,
                             float* running_var, const float* inp, const float* weight, const float* bias,
                             int64_t N, int64_t C, int64_t HW, const BatchNormOptions& options) {
  const int64_t count = N * HW;  // values per channel
  const double momentum = options.momentum, eps = options.eps;
  for (int64_t c = 0; c < C; c++) {
    if (count == 0) {  // an empty batch: nothing to learn from (see the header)
      save_mean[c] = 0.f;
      save_rstd[c] = static_cast<float>(1.0 / std::sqrt(eps));
      continue;
    }
    double sum = 0;
    for (int64_t n = 0; n < N; n++) {
      const float* x = inp + (n * C + c) * HW;
      for (int64_t i = 0; i < HW; i++) sum += x[i];
    }
    double m = sum / static_cast<double>(count);
    // Two passes (mean first, then squared deviations): no cancellation when
    // the mean is large against the spread.
    double sq = 0;
    for (int64_t n = 0; n < N; n++) {
      const float* x = inp + (n * C + c) * HW;
      for (int64_t i = 0; i < HW; i++) {
        double d = x[i] - m;
        sq += d * d;
      }
    }
    double biased_var = sq / static_cast<double>(count);
    float mf = static_cast<float>(m);
    float s = static_cast<float>(1.0 / std::sqrt(biased_var + eps));
    float w = weight[c], b = bias[c];
    for (int64_t n = 0; n < N; n++) {
      const float* x = inp + (n * C + c) * HW;
      float* y = out + (n * C + c) * HW;
      for (int64_t i = 0; i < HW; i++) y[i] = (x[i] - mf) * s * w + b;
    }
    save_mean[c] = mf;
    save_rstd[c] = s;
    running_mean[c] = static_cast<float>((1 - momentum) * running_mean[c] + momentum * m);
    if (count > 1) {  // one value has no unbiased variance: running_var stays (see the header)
      double unbiased_var = sq / static_cast<double>(count - 1);
      running_var[c] = static_cast<float>((1 - momentum) * running_var[c] + momentum * unbiased_var);
    }
  }
}

void batchnorm_forward_eval(float* out, const float* inp, const float* weight, const float* bias,
                            const float* running_mean, const float* running_var, int64_t N, int64_t C,
                            int64_t HW, const BatchNormOptions& options) {
  for (int64_t c = 0; c < C; c++) {
    float m = running_mean[c];
    float s = static_cast<float>(1.0 / std::sqrt(static_cast<double>(running_var[c]) + options.eps));
    float w = weight[c], b = bias[c];
    for (int64_t n = 0; n < N; n++) {
      const float* x = inp + (n * C + c) * HW;
      float* y = out + (n * C + c) * HW;
      for (int64_t i = 0; i < HW; i++) y[i] = (x[i] - m) * s * w + b;  // reads x[i] before writing y[i]
    }
  }
}

// With xhat = (x - mean) * rstd, over the N * HW values of a channel:
//   dinp = weight * rstd * (dout - mean(dout) - xhat * mean(dout * xhat))
//   dweight += sum(dout * xhat),  dbias += sum(dout)
// The second pass reads dout[i] before writing dinp[i], so dinp may alias dout.
void batchnorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* save_mean, const float* save_rstd, int64_t N, int64_t C,
                        int64_t HW) {
  const int64_t count = N * HW;
  if (count == 0) return;  // no values: no gradient to add, no dinp to write
  for (int64_t c = 0; c < C; c++) {
    float m = save_mean[c], s = save_rstd[c];
    double dy_sum = 0, dyx_sum = 0;
    for (int64_t n = 0; n < N; n++) {
      const float* x = inp + (n * C + c) * HW;
      const float* dy = dout + (n * C + c) * HW;
      for (int64_t i = 0; i < HW; i++) {
        float xhat = (x[i] - m) * s;
        dy_sum += dy[i];
        dyx_sum += static_cast<double>(dy[i]) * xhat;
      }
    }
    dbias[c] += static_cast<float>(dy_sum);
    dweight[c] += static_cast<float>(dyx_sum);
    float dy_mean = static_cast<float>(dy_sum / static_cast<double>(count));
    float dyx_mean = static_cast<float>(dyx_sum / static_cast<double>(count));
    float ws = weight[c] * s;
    for (int64_t n = 0; n < N; n++) {
      const float* x = inp + (n * C + c) * HW;
      const float* dy = dout + (n * C + c) * HW;
      float* dx = dinp + (n * C + c) * HW;
      for (int64_t i = 0; i < HW; i++) {
        float xhat = (x[i] - m) * s;
        dx[i] = ws * (dy[i] - dy_mean - xhat * dyx_mean);
      }
    }
  }
}

}  // namespace tandem::kernels::cpu
