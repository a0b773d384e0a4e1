// CPU ReLU/GELU against naive float64 formulas.
#include <cmath>

#include "kernels/activation.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
using tandem::kernels::Activation;

static double gelu64(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

TEST_CASE("cpu activations match float64 formulas", "[kernels][activation]") {
  for (int64_t n : kOddSizes) {
    uint64_t seed = fresh_seed();
    INFO("n=" << n << " seed=" << seed);
    Tensor x = random_tensor({n}, seed, -4.f, 4.f);
    Tensor dout = random_tensor({n}, seed + 1);
    Tensor y = Tensor::empty({n}, DType::f32, Device::cpu());
    Tensor dx = random_tensor({n}, seed + 2);  // backward must overwrite this
    std::vector<float> dx0 = dx.to_vector(), xv = x.to_vector(), dv = dout.to_vector();

    for (Activation act : {Activation::relu, Activation::gelu}) {
      dx.copy_from(Tensor::from_vector(dx0, {n}));
      kernels::activation_forward(act, y, x, Stream());
      kernels::activation_backward(act, dx, x, dout, Stream());
      std::vector<double> y64(n), dx64(n);
      for (int64_t i = 0; i < n; i++) {
        double v = xv[i];
        if (act == Activation::relu) {
          y64[i] = v > 0 ? v : 0;
          dx64[i] = v > 0 ? dv[i] : 0.0;
        } else {
          const double h = 1e-5;  // derivative by central difference in float64
          y64[i] = gelu64(v);
          dx64[i] = dv[i] * (gelu64(v + h) - gelu64(v - h)) / (2 * h);
        }
      }
      // Absolute error at the scale of the data (|x| <= 4): a relative error
      // is meaningless for a single element near a zero of the function.
      REQUIRE(max_abs_diff(y.to_vector(), y64) <= 4e-6);
      REQUIRE(max_abs_diff(dx.to_vector(), dx64) <= 4e-5);
    }
  }
}
