// CUDA sum and norm_squared: bitwise repeatable from run to run, and within
// fp32 rounding of the float64 sum, for f32 and bf16 inputs.
#include <cmath>
#include <cstring>

#include "kernels/reduce.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

namespace {

enum class Reduction { sum, norm_squared };

// One reduction on the GPU into a poisoned out, with a poisoned scratch.
float gpu_reduce(Reduction r, const Tensor& x, const Stream& stream) {
  Tensor out = make_tensor({NAN}, {1}, DType::f32, stream.device());
  Tensor scratch = make_tensor(std::vector<float>(kernels::kReduceScratchElems, NAN),
                               {kernels::kReduceScratchElems}, DType::f32, stream.device());
  if (r == Reduction::sum) kernels::sum(out, x, scratch, stream);
  else kernels::norm_squared(out, x, scratch, stream);
  stream.synchronize();
  return out.to_vector()[0];
}

uint32_t bits_of(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}

}  // namespace

TEST_CASE("cuda reductions are deterministic and match float64", "[gpu][reduce]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{33}, int64_t{1000}, int64_t{1 << 20} + 3,
                      int64_t{5000011}}) {
      uint64_t seed = fresh_seed();
      INFO("dtype=" << dtype_name(dtype) << " n=" << n << " seed=" << seed);
      std::vector<float> x = random_vector(n, seed, -2.f, 3.f);
      if (dtype == DType::bf16) x = rounded_to_bf16(x);  // the values the GPU sees
      double sum = 0, sum_abs = 0, sum_sq = 0;
      for (float v : x) {
        sum += v;
        sum_abs += std::fabs(v);
        sum_sq += static_cast<double>(v) * v;
      }
      Tensor gx = make_tensor(x, {n}, dtype, gpu);

      float s1 = gpu_reduce(Reduction::sum, gx, stream), s2 = gpu_reduce(Reduction::sum, gx, stream);
      float q1 = gpu_reduce(Reduction::norm_squared, gx, stream), q2 = gpu_reduce(Reduction::norm_squared, gx, stream);
      REQUIRE(bits_of(s1) == bits_of(s2));
      REQUIRE(bits_of(q1) == bits_of(q2));
      // fp32 trees: errors scale with the sum of magnitudes, not the result.
      REQUIRE(std::fabs(s1 - sum) <= 1e-5 * sum_abs);
      REQUIRE(std::fabs(q1 - sum_sq) <= 1e-5 * sum_sq);
      if (n == 0) REQUIRE((s1 == 0.f && q1 == 0.f));

      // The CPU twin (f32 only) agrees the same way.
      if (dtype == DType::f32) {
        Tensor cout = Tensor::empty({1}, DType::f32, Device::cpu());
        kernels::sum(cout, Tensor::from_vector(x, {n}), Tensor(), Stream());
        REQUIRE(std::fabs(s1 - cout.to_vector()[0]) <= 1e-5 * sum_abs);
      }
    }
  }
}

TEST_CASE("cuda reductions need a large enough scratch", "[gpu][reduce]") {
  Device gpu = Device::cuda(0);
  Tensor x = Tensor::zeros({10}, DType::f32, gpu), out = Tensor::zeros({1}, DType::f32, gpu);
  Tensor small = Tensor::zeros({kernels::kReduceScratchElems - 1}, DType::f32, gpu);
  REQUIRE_THROWS(kernels::sum(out, x, small, Stream::default_for(gpu)));
  REQUIRE_THROWS(kernels::sum(out, x, Tensor(), Stream::default_for(gpu)));
}
