// CUDA fused softmax + cross-entropy against the CPU twin, f32 and bf16
// logits, poisoned outputs, ignored rows, huge and masked logits, dlogits
// written over the logits, and the documented NaN for a target >= V.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "kernels/softmax_cross_entropy.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

namespace {

using Vec = std::vector<float>;
using Ints = std::vector<int32_t>;

// Logits the GPU's dtype can hold exactly, with every third logit of row 0
// masked to -inf (never the target).
Vec random_logits(int64_t N, int64_t V, Ints& targets, float range, DType dtype, uint64_t seed) {
  Vec x = random_vector(N * V, seed, -range, range);
  if (dtype == DType::bf16) x = rounded_to_bf16(x);
  if (V >= 3) {
    for (int64_t i = 0; i < V; i += 3) x[i] = -INFINITY;
    targets[0] = 1;
  }
  return x;
}

struct Result {
  Vec losses, dlogits;
};

Result run_cpu(const Vec& logits, const Ints& targets, float dloss, int64_t N, int64_t V) {
  Tensor x = Tensor::from_vector(logits, {N, V}), t = make_int_tensor(targets, {N});
  Tensor losses = Tensor::empty({N}, DType::f32, Device::cpu()), dlogits = Tensor::empty({N, V}, DType::f32, Device::cpu());
  kernels::softmax_cross_entropy_forward(losses, x, t, Stream());
  kernels::softmax_cross_entropy_backward(dlogits, x, t, dloss, Stream());
  return {losses.to_vector(), dlogits.to_vector()};
}

enum class Dlogits { separate, over_logits };

// Poisoned outputs; the backward either into its own tensor or over the
// logits (after the forward has read them).
Result run_gpu(const Vec& logits, const Ints& targets, float dloss, int64_t N, int64_t V, DType dtype, Dlogits where,
               const Stream& stream) {
  Device gpu = stream.device();
  Tensor x = make_tensor(logits, {N, V}, dtype, gpu), t = make_int_tensor(targets, {N}, gpu);
  Tensor losses = make_tensor(Vec(N, NAN), {N}, DType::f32, gpu);
  Tensor dlogits = where == Dlogits::over_logits ? x : make_tensor(Vec(N * V, NAN), {N, V}, dtype, gpu);
  kernels::softmax_cross_entropy_forward(losses, x, t, stream);
  kernels::softmax_cross_entropy_backward(dlogits, x, t, dloss, stream);
  stream.synchronize();
  return {losses.to_vector(), dlogits.to_vector()};
}

bool ignored_rows_zero(const Result& r, const Ints& targets, int64_t V) {
  for (size_t n = 0; n < targets.size(); n++) {
    if (targets[n] >= 0) continue;
    if (r.losses[n] != 0.f) return false;
    for (int64_t i = 0; i < V; i++)
      if (r.dlogits[n * V + i] != 0.f) return false;
  }
  return true;
}

// Worst |got - want| / (1 + |want|): a loss near 0 (the target far above
// every other logit) is only known to fp32's absolute precision.
double loss_error(const Vec& got, const Vec& want) {
  REQUIRE(got.size() == want.size());
  double worst = 0;
  for (size_t i = 0; i < got.size(); i++) {
    double e = std::fabs(static_cast<double>(got[i]) - want[i]) / (1.0 + std::fabs(want[i]));
    if (std::isnan(e)) return e;
    worst = std::max(worst, e);
  }
  return worst;
}

bool same_bits(const Vec& a, const Vec& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

const std::vector<int64_t> kClasses = {1, 7, 33, 1000, 50257};  // V; 50257: GPT-2's vocabulary

}  // namespace

TEST_CASE("cuda softmax cross-entropy matches the cpu twin", "[gpu][softmax_cross_entropy]") {
  Stream stream = Stream::create(Device::cuda(0));
  for (DType dtype : {DType::f32, DType::bf16}) {
    double tol = dtype == DType::f32 ? 1e-5 : 1e-2;  // dlogits are stored in dtype; losses always f32
    for (int64_t N : {int64_t{1}, int64_t{7}, int64_t{33}}) {
      for (int64_t V : kClasses) {
        for (float range : {5.f, 1000.f}) {  // ordinary and huge logits
          uint64_t seed = fresh_seed();
          INFO("dtype=" << dtype_name(dtype) << " N=" << N << " V=" << V << " range=" << range << " seed=" << seed);
          Ints targets = random_targets(N, V, seed);
          Vec logits = random_logits(N, V, targets, range, dtype, seed + 1);
          float dloss = mean_dloss(targets);
          Result want = run_cpu(logits, targets, dloss, N, V);
          Result got = run_gpu(logits, targets, dloss, N, V, dtype, Dlogits::separate, stream);
          REQUIRE(all_finite(got.losses));
          REQUIRE(all_finite(got.dlogits));
          REQUIRE(loss_error(got.losses, want.losses) <= 1e-5);
          // |softmax - onehot| <= 1, so errors are measured against dloss: a
          // relative error would fail rows whose gradient is all but 0.
          REQUIRE(max_abs_diff(got.dlogits, want.dlogits) <= tol * dloss);
          REQUIRE(ignored_rows_zero(got, targets, V));
        }
      }
    }
  }
}

TEST_CASE("cuda softmax cross-entropy backward may write over the logits", "[gpu][softmax_cross_entropy]") {
  Stream stream = Stream::create(Device::cuda(0));
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (int64_t V : kClasses) {
      const int64_t N = 33;
      uint64_t seed = fresh_seed();
      INFO("dtype=" << dtype_name(dtype) << " V=" << V << " seed=" << seed);
      Ints targets = random_targets(N, V, seed);
      Vec logits = random_logits(N, V, targets, 5.f, dtype, seed + 1);
      float dloss = mean_dloss(targets);
      Result separate = run_gpu(logits, targets, dloss, N, V, dtype, Dlogits::separate, stream);
      Result inplace = run_gpu(logits, targets, dloss, N, V, dtype, Dlogits::over_logits, stream);
      REQUIRE(all_finite(inplace.dlogits));
      REQUIRE(same_bits(inplace.losses, separate.losses));
      REQUIRE(same_bits(inplace.dlogits, separate.dlogits));
    }
  }
}

TEST_CASE("cuda softmax cross-entropy gives NaN for a target >= V", "[gpu][softmax_cross_entropy]") {
  // A broken precondition (kernels/softmax_cross_entropy.h): visible, and
  // confined to its row.
  Stream stream = Stream::create(Device::cuda(0));
  const int64_t N = 3, V = 1000;
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  Vec logits = random_vector(N * V, seed);
  Ints targets = {5, static_cast<int32_t>(V), 7};
  Result got = run_gpu(logits, targets, 1.f, N, V, DType::f32, Dlogits::separate, stream);
  REQUIRE(std::isfinite(got.losses[0]));
  REQUIRE(std::isnan(got.losses[1]));
  REQUIRE(std::isfinite(got.losses[2]));
  for (int64_t i = 0; i < V; i++) {
    REQUIRE(std::isfinite(got.dlogits[i]));
    REQUIRE(std::isnan(got.dlogits[V + i]));
    REQUIRE(std::isfinite(got.dlogits[2 * V + i]));
  }
}
