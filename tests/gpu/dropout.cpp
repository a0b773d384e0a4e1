// CUDA dropout against the CPU twin: identical masks (which exercises the
// device-side Philox against the host one), values within tolerance, the
// same mask again in backward, and counter offsets that are not a multiple
// of the four words of a Philox block.
#include "kernels/dropout.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
using kernels::DropoutOptions;

namespace {

std::vector<float> cpu_forward(const std::vector<float>& x, const DropoutOptions& opts) {
  int64_t n = static_cast<int64_t>(x.size());
  Tensor out = Tensor::empty({n}, DType::f32, Device::cpu());
  kernels::dropout_forward(out, Tensor::from_vector(x, {n}), opts, Stream());
  return out.to_vector();
}

std::vector<float> gpu_forward(const std::vector<float>& x, DType dtype, const DropoutOptions& opts,
                               const Stream& stream) {
  int64_t n = static_cast<int64_t>(x.size());
  Tensor inp = make_tensor(x, {n}, dtype, stream.device());
  Tensor out = make_tensor(std::vector<float>(n, NAN), {n}, dtype, stream.device());  // poisoned
  kernels::dropout_forward(out, inp, opts, stream);
  stream.synchronize();
  return out.to_vector();
}

std::vector<bool> mask_of(const std::vector<float>& y) {
  std::vector<bool> mask(y.size());
  for (size_t i = 0; i < y.size(); i++) mask[i] = y[i] != 0.f;
  return mask;
}

}  // namespace

TEST_CASE("cuda dropout masks and values match the cpu twin", "[gpu][dropout]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  for (DType dtype : {DType::f32, DType::bf16}) {
    double tol = dtype == DType::f32 ? 1e-6 : 1e-2;
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{1000}, int64_t{1 << 20} + 3}) {
      for (float p : {0.1f, 0.5f, 0.9f}) {
        uint64_t seed = fresh_seed();
        // Offsets 0..7 cover every position within a Philox block, twice.
        DropoutOptions opts{.p = p, .seed = seed, .offset = (seed >> 8) % 8 + 4 * ((seed >> 16) % 1000)};
        INFO("dtype=" << dtype_name(dtype) << " n=" << n << " p=" << p << " seed=" << seed
                      << " offset=" << opts.offset);

        // The mask, read off an all-ones input: must be identical.
        std::vector<float> ones(n, 1.f);
        std::vector<float> gy = gpu_forward(ones, dtype, opts, stream);
        REQUIRE(all_finite(gy));
        std::vector<bool> mask = mask_of(gy);
        REQUIRE(mask == mask_of(cpu_forward(ones, opts)));

        // Values on random inputs, rounded to the dtype.
        std::vector<float> x = random_vector(n, seed + 1), g = random_vector(n, seed + 2);
        if (dtype == DType::bf16) x = rounded_to_bf16(x), g = rounded_to_bf16(g);
        REQUIRE(rel_error(gpu_forward(x, dtype, opts, stream), cpu_forward(x, opts)) <= tol);

        // Backward in place over dout: the same mask, the same scale.
        Tensor gdout = make_tensor(g, {n}, dtype, gpu);
        kernels::dropout_backward(gdout, gdout, opts, stream);
        stream.synchronize();
        Tensor cdx = Tensor::empty({n}, DType::f32, Device::cpu());
        kernels::dropout_backward(cdx, Tensor::from_vector(g, {n}), opts, Stream());
        std::vector<float> dx = gdout.to_vector();
        REQUIRE(rel_error(dx, cdx.to_vector()) <= tol);
        int64_t mask_mismatches = 0;
        for (int64_t i = 0; i < n; i++) mask_mismatches += g[i] != 0.f && (dx[i] != 0.f) != mask[i];
        REQUIRE(mask_mismatches == 0);
      }
    }
  }
}

TEST_CASE("cuda dropout is deterministic, and p = 0 copies", "[gpu][dropout]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  const int64_t n = 100003;
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  std::vector<float> ones(n, 1.f);
  DropoutOptions opts{.p = 0.3f, .seed = seed, .offset = 5};
  std::vector<float> a = gpu_forward(ones, DType::f32, opts, stream);
  REQUIRE(gpu_forward(ones, DType::f32, opts, stream) == a);
  DropoutOptions shifted = opts;
  shifted.offset += 1;
  REQUIRE(gpu_forward(ones, DType::f32, shifted, stream) != a);

  // A tail [k, n) dropped alone at offset + k gives the tail of the mask.
  for (int64_t k : {1, 2, 3, 4, 5, 1001}) {
    DropoutOptions tail = opts;
    tail.offset += k;
    REQUIRE(gpu_forward(std::vector<float>(n - k, 1.f), DType::f32, tail, stream) ==
            std::vector<float>(a.begin() + k, a.end()));
  }

  std::vector<float> x = random_vector(n, seed + 1);
  REQUIRE(gpu_forward(x, DType::f32, {.p = 0.f, .seed = seed, .offset = 0}, stream) == x);
}
