// CUDA ReLU/GELU against the CPU twin, f32 and bf16.
#include "kernels/activation.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
using tandem::kernels::Activation;

TEST_CASE("cuda activations match the cpu twin", "[gpu][activation]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  for (DType dtype : {DType::f32, DType::bf16}) {
    double tol = dtype == DType::f32 ? 1e-6 : 1e-2;  // per unit of |x| <= 4
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{1000}, int64_t{1 << 20} + 3}) {
      uint64_t seed = fresh_seed();
      INFO("dtype=" << dtype_name(dtype) << " n=" << n << " seed=" << seed);
      for (Activation act : {Activation::relu, Activation::gelu}) {
        // Inputs rounded to the dtype, so both sides see the same values.
        std::vector<float> x = random_vector(n, seed, -4.f, 4.f), dout = random_vector(n, seed + 1),
                           dx0 = random_vector(n, seed + 2);
        if (dtype == DType::bf16) x = rounded_to_bf16(x), dout = rounded_to_bf16(dout), dx0 = rounded_to_bf16(dx0);

        Tensor cx = Tensor::from_vector(x, {n}), cdout = Tensor::from_vector(dout, {n});
        Tensor cy = Tensor::empty({n}, DType::f32, Device::cpu()), cdx = Tensor::from_vector(dx0, {n});
        kernels::activation_forward(act, cy, cx, Stream());
        kernels::activation_backward(act, cdx, cx, cdout, Stream());

        Tensor gx = make_tensor(x, {n}, dtype, gpu), gdout = make_tensor(dout, {n}, dtype, gpu);
        Tensor gy = make_tensor(std::vector<float>(n, NAN), {n}, dtype, gpu);  // poisoned
        Tensor gdx = make_tensor(dx0, {n}, dtype, gpu);
        kernels::activation_forward(act, gy, gx, stream);
        kernels::activation_backward(act, gdx, gx, gdout, stream);
        stream.synchronize();

        auto y = gy.to_vector(), dx = gdx.to_vector();
        REQUIRE(all_finite(y));
        // Absolute error against the magnitude of the data: relative error
        // per vector is meaningless at n = 1 near a zero of the function.
        REQUIRE(max_abs_diff(y, cy.to_vector()) <= tol * 4);
        REQUIRE(max_abs_diff(dx, cdx.to_vector()) <= tol * 4);
      }
    }
  }
}
