// CPU reference for ReLU and GELU (tanh form). See kernels/activation.h.
#include <cmath>

#include "kernels/activation.h"

namespace tandem::kernels::cpu {

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;
}  // namespace

void relu_forward(float* out, const float* inp, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = inp[i] > 0.f ? inp[i] : 0.f;
}

void relu_backward(float* dinp, const float* inp, const float* dout, int64_t n) {
  for (int64_t i = 0; i < n; i++) dinp[i] = inp[i] > 0.f ? dout[i] : 0.f;
}

// gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
void gelu_forward(float* out, const float* inp, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    float x = inp[i];
    out[i] = 0.5f * x * (1.f + std::tanh(kSqrt2OverPi * (x + kGeluCubic * x * x * x)));
  }
}

void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    float x = inp[i];
    float u = kSqrt2OverPi * (x + kGeluCubic * x * x * x);
    float t = std::tanh(u);
    float sech2 = 1.f - t * t;
    float du = kSqrt2OverPi * (1.f + 3.f * kGeluCubic * x * x);
    dinp[i] = dout[i] * (0.5f * (1.f + t) + 0.5f * x * sech2 * du);
  }
}

}  // namespace tandem::kernels::cpu
