// CUDA residual add against the CPU twin, f32 and bf16, including in place.
#include "kernels/residual.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

TEST_CASE("cuda residual_add matches the cpu twin", "[gpu][residual]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  for (DType dtype : {DType::f32, DType::bf16}) {
    double tol = dtype == DType::f32 ? 1e-6 : 1e-2;
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{1000}, int64_t{1 << 20} + 3}) {
      uint64_t seed = fresh_seed();
      INFO("dtype=" << dtype_name(dtype) << " n=" << n << " seed=" << seed);
      // Inputs rounded to the dtype, so both sides see the same values.
      std::vector<float> a = random_vector(n, seed), b = random_vector(n, seed + 1, -3.f, 3.f);
      if (dtype == DType::bf16) a = rounded_to_bf16(a), b = rounded_to_bf16(b);

      Tensor cout = Tensor::empty({n}, DType::f32, Device::cpu());
      kernels::residual_add(cout, Tensor::from_vector(a, {n}), Tensor::from_vector(b, {n}), Stream());
      std::vector<float> want = cout.to_vector();

      Tensor ga = make_tensor(a, {n}, dtype, gpu), gb = make_tensor(b, {n}, dtype, gpu);
      Tensor gout = make_tensor(std::vector<float>(n, NAN), {n}, dtype, gpu);  // poisoned
      kernels::residual_add(gout, ga, gb, stream);
      stream.synchronize();
      std::vector<float> got = gout.to_vector();
      REQUIRE(all_finite(got));
      REQUIRE(rel_error(got, want) <= tol);

      // In place into the residual stream: a += b.
      kernels::residual_add(ga, ga, gb, stream);
      stream.synchronize();
      REQUIRE(rel_error(ga.to_vector(), want) <= tol);
    }
  }
}
