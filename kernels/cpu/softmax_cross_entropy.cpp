// CPU reference for the fused softmax + cross-entropy. See
// kernels/softmax_cross_entropy.h. The softmax normaliser is computed in fp64
// after subtracting the row maximum, so logits of any magnitude stay finite.
#include <cmath>
#include <string>

#include "kernels/softmax_cross_entropy.h"

namespace tandem::kernels::cpu {

namespace {

// Throws before anything is written, so a bad batch leaves the outputs as
// they were.
void check_targets(const int32_t* targets, int64_t N, int64_t V, const char* op) {
  for (int64_t n = 0; n < N; n++)
    TANDEM_CHECK(targets[n] < V, std::string(op) + ": target " + std::to_string(targets[n]) + " at row " +
                                     std::to_string(n) + " is not below V = " + std::to_string(V));
}

// The row maximum and sum_i exp(x_i - max) >= 1.
struct Normaliser {
  double max, sum;
};

Normaliser normaliser(const float* x, int64_t V) {
  float m = x[0];
  for (int64_t i = 1; i < V; i++) m = std::fmax(m, x[i]);
  double sum = 0;
  for (int64_t i = 0; i < V; i++) sum += std::exp(static_cast<double>(x[i]) - m);
  return {m, sum};
}

}  // namespace

void softmax_cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int64_t N,
                                   int64_t V) {
  check_targets(targets, N, V, "softmax_cross_entropy_forward");
  for (int64_t n = 0; n < N; n++) {
    int32_t t = targets[n];
    if (t < 0) {
      losses[n] = 0.f;
      continue;
    }
    const float* x = logits + n * V;
    Normaliser z = normaliser(x, V);
    // logsumexp - x_t = (max - x_t) + log(sum): no large terms cancel.
    losses[n] = static_cast<float>((z.max - x[t]) + std::log(z.sum));
  }
}

void softmax_cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets, float dloss,
                                    int64_t N, int64_t V) {
  check_targets(targets, N, V, "softmax_cross_entropy_backward");
  for (int64_t n = 0; n < N; n++) {
    int32_t t = targets[n];
    float* dx = dlogits + n * V;
    if (t < 0) {
      for (int64_t i = 0; i < V; i++) dx[i] = 0.f;
      continue;
    }
    const float* x = logits + n * V;
    // The whole row is read here, before any write below: dlogits may alias
    // logits, and dx[i] is then written only after x[i] was read.
    Normaliser z = normaliser(x, V);
    for (int64_t i = 0; i < V; i++) {
      double p = std::exp(static_cast<double>(x[i]) - z.max) / z.sum;
      dx[i] = static_cast<float>((p - (i == t ? 1.0 : 0.0)) * dloss);
    }
  }
}

}  // namespace tandem::kernels::cpu
