// CPU bias forward/backward against naive float64 sums.
#include "kernels/bias.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

TEST_CASE("cpu bias_add and bias_backward match float64", "[kernels][bias]") {
  for (int64_t N : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{33}, int64_t{1000}}) {
    for (int64_t C : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{100}, int64_t{130}}) {
      uint64_t seed = fresh_seed();
      INFO("N=" << N << " C=" << C << " seed=" << seed);
      std::vector<float> x = random_vector(N * C, seed), b = random_vector(C, seed + 1),
                         db0 = random_vector(C, seed + 2);  // dbias starts non-zero: += must keep it
      Tensor out = Tensor::from_vector(x, {N, C}), bias = Tensor::from_vector(b, {C});
      Tensor dbias = Tensor::from_vector(db0, {C});
      kernels::bias_add(out, bias, Stream());
      kernels::bias_backward(dbias, Tensor::from_vector(x, {N, C}), Stream());

      std::vector<double> out64(N * C), db64(C);
      for (int64_t c = 0; c < C; c++) db64[c] = db0[c];
      for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
          out64[n * C + c] = static_cast<double>(x[n * C + c]) + b[c];
          db64[c] += x[n * C + c];
        }
      REQUIRE(rel_error(out.to_vector(), out64) <= 1e-7);
      REQUIRE(rel_error(dbias.to_vector(), db64) <= 1e-7);
    }
  }
}

TEST_CASE("cpu bias flattens leading dimensions", "[kernels][bias]") {
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  std::vector<float> x = random_vector(2 * 3 * 5, seed), b = random_vector(5, seed + 1);
  Tensor out3 = Tensor::from_vector(x, {2, 3, 5}), out2 = Tensor::from_vector(x, {6, 5});
  Tensor bias = Tensor::from_vector(b, {5});
  kernels::bias_add(out3, bias, Stream());
  kernels::bias_add(out2, bias, Stream());
  REQUIRE(max_abs_diff(out3.to_vector(), out2.to_vector()) == 0.0);

  Tensor db3 = Tensor::zeros({5}, DType::f32, Device::cpu()), db2 = Tensor::zeros({5}, DType::f32, Device::cpu());
  kernels::bias_backward(db3, out3, Stream());
  kernels::bias_backward(db2, out2, Stream());
  REQUIRE(max_abs_diff(db3.to_vector(), db2.to_vector()) == 0.0);
}

TEST_CASE("cpu bias rejects mismatched shapes", "[kernels][bias]") {
  Tensor out = Tensor::zeros({4, 5}, DType::f32, Device::cpu());
  REQUIRE_THROWS(kernels::bias_add(out, Tensor::zeros({4}, DType::f32, Device::cpu()), Stream()));
  REQUIRE_THROWS(kernels::bias_backward(Tensor::zeros({6}, DType::f32, Device::cpu()), out, Stream()));
  REQUIRE_THROWS(kernels::bias_add(out, Tensor(), Stream()));
}
