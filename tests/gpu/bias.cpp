// CUDA bias forward/backward against the CPU twin, f32 and bf16, and the
// determinism of bias_backward.
#include <cmath>
#include <cstring>
#include <utility>

#include "kernels/bias.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

namespace {

// The CPU twin's out = x + b and dbias = db0 + column sums of x.
std::pair<Tensor, Tensor> run_cpu(const std::vector<float>& x, const std::vector<float>& b,
                                  const std::vector<float>& db0, int64_t N, int64_t C) {
  Tensor out = Tensor::from_vector(x, {N, C}), dbias = Tensor::from_vector(db0, {C});
  kernels::bias_add(out, Tensor::from_vector(b, {C}), Stream());
  kernels::bias_backward(dbias, Tensor::from_vector(x, {N, C}), Stream());
  return {out, dbias};
}

struct Dims {
  int64_t N, C;
};
// Rows include 0 and a tall case; columns straddle the 8/16-column strips
// of the CUDA backward kernel.
const std::vector<Dims> kDims = {{0, 7},   {1, 1},     {7, 33},    {33, 8},    {1000, 7},
                                 {1031, 768}, {20000, 17}, {4097, 1031}, {3, 5000}};

}  // namespace

TEST_CASE("cuda bias_add and bias_backward match the cpu twin", "[gpu][bias]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  for (DType dtype : {DType::f32, DType::bf16}) {
    double tol = dtype == DType::f32 ? 1e-5 : 1e-2;
    for (Dims d : kDims) {
      auto [N, C] = d;
      uint64_t seed = fresh_seed();
      INFO("dtype=" << dtype_name(dtype) << " N=" << N << " C=" << C << " seed=" << seed);
      std::vector<float> x = draw(N * C, seed, dtype), b = draw(C, seed + 1, dtype), db0 = draw(C, seed + 2, dtype);

      auto [cpu_out, cpu_db] = run_cpu(x, b, db0, N, C);
      auto [out_scale, db_scale] = run_cpu(abs_of(x), abs_of(b), abs_of(db0), N, C);

      // Every input is made before the first launch and outlives the
      // synchronize: a temporary freed while a kernel on `stream` still
      // reads it could be handed to the next make_tensor and overwritten by
      // its copy, which runs on the legacy stream.
      Tensor gpu_out = make_tensor(x, {N, C}, dtype, gpu), gpu_db = make_tensor(db0, {C}, dtype, gpu);
      Tensor gpu_bias = make_tensor(b, {C}, dtype, gpu), gpu_dout = make_tensor(x, {N, C}, dtype, gpu);
      kernels::bias_add(gpu_out, gpu_bias, stream);
      kernels::bias_backward(gpu_db, gpu_dout, stream);  // += onto db0
      stream.synchronize();

      auto out = gpu_out.to_vector(), db = gpu_db.to_vector();
      REQUIRE(all_finite(out));
      REQUIRE(all_finite(db));
      REQUIRE(scaled_error(out, cpu_out, out_scale) <= tol);
      REQUIRE(scaled_error(db, cpu_db, db_scale) <= tol);
    }
  }
}

TEST_CASE("cuda bias_backward is bitwise deterministic", "[gpu][bias]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  for (DType dtype : {DType::f32, DType::bf16}) {
    const int64_t N = 65537, C = 769;
    uint64_t seed = fresh_seed();
    INFO("dtype=" << dtype_name(dtype) << " seed=" << seed);
    Tensor dout = make_tensor(random_vector(N * C, seed), {N, C}, dtype, gpu);
    std::vector<float> db0 = random_vector(C, seed + 1);
    Tensor first = make_tensor(db0, {C}, dtype, gpu), second = make_tensor(db0, {C}, dtype, gpu);
    kernels::bias_backward(first, dout, stream);
    kernels::bias_backward(second, dout, stream);
    stream.synchronize();
    auto a = first.to_vector(), b = second.to_vector();
    REQUIRE(all_finite(a));
    REQUIRE(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  }
}
