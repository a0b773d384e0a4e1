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

// gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3),
// computed as x * sigmoid(2u): the same function (0.5 (1 + tanh(u)) =
// sigmoid(2u)), one expf instead of a tanhf, which is several times slower.
// For large |u| expf saturates to 0 or inf and s to 1 or 0, as tanh does.
namespace {
inline float gelu_u(float x) { return kSqrt2OverPi * (x + kGeluCubic * x * x * x); }
inline float sigmoid(float z) { return 1.f / (1.f + std::exp(-z)); }
}  // namespace

void gelu_forward(float* out, const float* inp, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    float x = inp[i];
    out[i] = x * sigmoid(2.f * gelu_u(x));
  }
}

// d/dx = s + x s (1 - s) 2 du/dx, with s = sigmoid(2u) (1 - tanh^2(u) = 4 s (1 - s)).
void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    float x = inp[i];
    float s = sigmoid(2.f * gelu_u(x));
    float du = kSqrt2OverPi * (1.f + 3.f * kGeluCubic * x * x);
    dinp[i] = dout[i] * (s + 2.f * x * s * (1.f - s) * du);
  }
}

}  // namespace tandem::kernels::cpu
