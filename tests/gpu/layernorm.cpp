// CUDA LayerNorm against the CPU twin, f32 and bf16, with poisoned outputs;
// dinp over dout; a bitwise run-to-run check of the backward; and the fused
// residual + LayerNorm forward against the unfused pair on the GPU, bit for
// bit, and against the CPU twin.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/layernorm.h"
#include "kernels/residual.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

namespace {

using Vec = std::vector<float>;

struct Inputs {
  Vec x, w, b, dy, dw0, db0;  // (N, C), (C), (C), (N, C), (C), (C)
};

// Fresh inputs, rounded through bf16 when the GPU stores bf16, so that both
// sides see the same values.
Inputs random_inputs(int64_t N, int64_t C, DType dtype, uint64_t seed) {
  Inputs in{random_vector(N * C, seed, -2.f, 3.f), random_vector(C, seed + 1, -1.5f, 1.5f),
            random_vector(C, seed + 2),            random_vector(N * C, seed + 3),
            random_vector(C, seed + 4),            random_vector(C, seed + 5)};
  if (dtype == DType::bf16)
    for (Vec* v : {&in.x, &in.w, &in.b, &in.dy, &in.dw0, &in.db0}) *v = rounded_to_bf16(*v);
  return in;
}

struct Outputs {
  Vec out, mean, rstd, dinp, dweight, dbias;
};

Outputs run_cpu(const Inputs& in, int64_t N, int64_t C) {
  Tensor x = Tensor::from_vector(in.x, {N, C}), w = Tensor::from_vector(in.w, {C});
  Tensor out = Tensor::empty({N, C}, DType::f32, Device::cpu()), dinp = Tensor::empty({N, C}, DType::f32, Device::cpu());
  Tensor mean = Tensor::empty({N}, DType::f32, Device::cpu()), rstd = Tensor::empty({N}, DType::f32, Device::cpu());
  Tensor dw = Tensor::from_vector(in.dw0, {C}), db = Tensor::from_vector(in.db0, {C});
  kernels::layernorm_forward(out, mean, rstd, x, w, Tensor::from_vector(in.b, {C}), {}, Stream());
  kernels::layernorm_backward(dinp, dw, db, Tensor::from_vector(in.dy, {N, C}), x, w, mean, rstd, Stream());
  return {out.to_vector(), mean.to_vector(), rstd.to_vector(), dinp.to_vector(), dw.to_vector(), db.to_vector()};
}

enum class Dinp { separate, over_dout };

// The GPU forward into poisoned outputs, and the GPU backward from the given
// mean/rstd (the CPU twin's, so the backward is compared on its own).
// Every tensor is made before the first launch and lives until the stream is
// synchronized: the caching allocator hands a freed block out again at once
// (runtime/core/allocator.h), and make_tensor copies on another stream.
Outputs run_gpu(const Inputs& in, const Vec& mean_in, const Vec& rstd_in, int64_t N, int64_t C, DType dtype,
                Dinp where, const Stream& stream) {
  Device gpu = stream.device();
  Tensor x = make_tensor(in.x, {N, C}, dtype, gpu), w = make_tensor(in.w, {C}, dtype, gpu);
  Tensor b = make_tensor(in.b, {C}, dtype, gpu);
  Tensor out = make_tensor(Vec(N * C, NAN), {N, C}, dtype, gpu);
  Tensor mean = make_tensor(Vec(N, NAN), {N}, DType::f32, gpu), rstd = make_tensor(Vec(N, NAN), {N}, DType::f32, gpu);
  Tensor dy = make_tensor(in.dy, {N, C}, dtype, gpu);
  Tensor dinp = where == Dinp::over_dout ? dy : make_tensor(Vec(N * C, NAN), {N, C}, dtype, gpu);
  Tensor dw = make_tensor(in.dw0, {C}, dtype, gpu), db = make_tensor(in.db0, {C}, dtype, gpu);
  Tensor mean_given = make_tensor(mean_in, {N}, DType::f32, gpu), rstd_given = make_tensor(rstd_in, {N}, DType::f32, gpu);

  kernels::layernorm_forward(out, mean, rstd, x, w, b, {}, stream);
  kernels::layernorm_backward(dinp, dw, db, dy, x, w, mean_given, rstd_given, stream);
  stream.synchronize();
  return {out.to_vector(), mean.to_vector(), rstd.to_vector(), dinp.to_vector(), dw.to_vector(), db.to_vector()};
}

// Per-element scales of the rounding error: mean_c |x| for the row means,
// |dweight0| + sum_n |dout * xhat| and |dbias0| + sum_n |dout| for the
// parameter gradients. A relative error would be at the mercy of
// cancellation (a mean or a dbias near 0).
struct Scales {
  Vec mean, dweight, dbias;
};

Scales error_scales(const Inputs& in, const Outputs& cpu, int64_t N, int64_t C) {
  Scales s{Vec(N, 0.f), Vec(C, 0.f), Vec(C, 0.f)};
  for (int64_t c = 0; c < C; c++) s.dweight[c] = std::fabs(in.dw0[c]), s.dbias[c] = std::fabs(in.db0[c]);
  for (int64_t n = 0; n < N; n++) {
    for (int64_t c = 0; c < C; c++) {
      float x = in.x[n * C + c], dy = in.dy[n * C + c];
      s.mean[n] += std::fabs(x) / static_cast<float>(C);
      s.dweight[c] += std::fabs(dy * (x - cpu.mean[n]) * cpu.rstd[n]);
      s.dbias[c] += std::fabs(dy);
    }
  }
  return s;
}

bool same_bits(const Vec& a, const Vec& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

}  // namespace

TEST_CASE("cuda layernorm matches the cpu twin", "[gpu][layernorm]") {
  Stream stream = Stream::create(Device::cuda(0));
  for (DType dtype : {DType::f32, DType::bf16}) {
    // bf16 rounds every stored output; the f32 statistics do not.
    double tol = dtype == DType::f32 ? 1e-5 : 1e-2;
    for (int64_t N : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{1031}}) {
      for (int64_t C : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{768}, int64_t{1031}}) {
        uint64_t seed = fresh_seed();
        INFO("dtype=" << dtype_name(dtype) << " N=" << N << " C=" << C << " seed=" << seed);
        Inputs in = random_inputs(N, C, dtype, seed);
        Outputs want = run_cpu(in, N, C);
        Outputs got = run_gpu(in, want.mean, want.rstd, N, C, dtype, Dinp::separate, stream);
        REQUIRE(all_finite(got.out));
        REQUIRE(all_finite(got.dinp));
        Scales scale = error_scales(in, want, N, C);
        REQUIRE(rel_error(got.out, want.out) <= tol);
        REQUIRE(scaled_error(got.mean, want.mean, scale.mean) <= 1e-5);
        REQUIRE(rel_error(got.rstd, want.rstd) <= 1e-5);
        REQUIRE(rel_error(got.dinp, want.dinp) <= tol);
        REQUIRE(scaled_error(got.dweight, want.dweight, scale.dweight) <= tol);
        REQUIRE(scaled_error(got.dbias, want.dbias, scale.dbias) <= tol);
      }
    }
  }
}

TEST_CASE("cuda layernorm backward is bitwise repeatable and may write dinp over dout", "[gpu][layernorm]") {
  Stream stream = Stream::create(Device::cuda(0));
  for (DType dtype : {DType::f32, DType::bf16}) {
    const int64_t N = 4099, C = 768;
    uint64_t seed = fresh_seed();
    INFO("dtype=" << dtype_name(dtype) << " seed=" << seed);
    Inputs in = random_inputs(N, C, dtype, seed);
    Outputs cpu = run_cpu(in, N, C);
    Outputs a = run_gpu(in, cpu.mean, cpu.rstd, N, C, dtype, Dinp::separate, stream);
    Outputs b = run_gpu(in, cpu.mean, cpu.rstd, N, C, dtype, Dinp::separate, stream);
    Outputs c = run_gpu(in, cpu.mean, cpu.rstd, N, C, dtype, Dinp::over_dout, stream);
    REQUIRE(all_finite(a.dinp));
    for (const Outputs* o : {&b, &c}) {
      REQUIRE(same_bits(o->out, a.out));
      REQUIRE(same_bits(o->mean, a.mean));
      REQUIRE(same_bits(o->rstd, a.rstd));
      REQUIRE(same_bits(o->dinp, a.dinp));
      REQUIRE(same_bits(o->dweight, a.dweight));
      REQUIRE(same_bits(o->dbias, a.dbias));
    }
  }
}

TEST_CASE("cuda layernorm with no rows does nothing", "[gpu][layernorm]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  const int64_t C = 33;
  Vec dw0 = random_vector(C, fresh_seed());
  Tensor empty_rows = make_tensor({}, {0, C}, DType::f32, gpu), stats = make_tensor({}, {0}, DType::f32, gpu);
  Tensor w = make_tensor(Vec(C, 1.f), {C}, DType::f32, gpu);
  Tensor dw = make_tensor(dw0, {C}, DType::f32, gpu), db = make_tensor(dw0, {C}, DType::f32, gpu);
  kernels::layernorm_forward(empty_rows, stats, stats, empty_rows, w, w, {}, stream);
  kernels::layernorm_backward(empty_rows, dw, db, empty_rows, empty_rows, w, stats, stats, stream);
  stream.synchronize();
  REQUIRE(same_bits(dw.to_vector(), dw0));
  REQUIRE(same_bits(db.to_vector(), dw0));
}

TEST_CASE("cuda residual_layernorm equals residual_add then layernorm_forward bitwise", "[gpu][layernorm]") {
  Stream stream = Stream::create(Device::cuda(0));
  Device gpu = stream.device();
  for (DType dtype : {DType::f32, DType::bf16}) {
    double tol = dtype == DType::f32 ? 1e-5 : 1e-2;
    for (int64_t N : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{1031}}) {
      for (int64_t C : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{768}, int64_t{1031}}) {
        uint64_t seed = fresh_seed();
        INFO("dtype=" << dtype_name(dtype) << " N=" << N << " C=" << C << " seed=" << seed);
        // a, b, weight, bias rounded through bf16 when the GPU stores bf16.
        Inputs in = random_inputs(N, C, dtype, seed);  // x is a, dy is b
        const Vec &a = in.x, &b = in.dy;
        Tensor ga = make_tensor(a, {N, C}, dtype, gpu), gb = make_tensor(b, {N, C}, dtype, gpu);
        Tensor w = make_tensor(in.w, {C}, dtype, gpu), bias = make_tensor(in.b, {C}, dtype, gpu);
        auto poisoned = [&](int64_t n, Shape shape, DType dt) { return make_tensor(Vec(n, NAN), shape, dt, gpu); };

        // The unfused pair; the fused kernel into poisoned outputs; and the
        // fused kernel in place, residual over (a copy of) a.
        Tensor r1 = poisoned(N * C, {N, C}, dtype), out1 = poisoned(N * C, {N, C}, dtype);
        Tensor m1 = poisoned(N, {N}, DType::f32), s1 = poisoned(N, {N}, DType::f32);
        Tensor r2 = poisoned(N * C, {N, C}, dtype), out2 = poisoned(N * C, {N, C}, dtype);
        Tensor m2 = poisoned(N, {N}, DType::f32), s2 = poisoned(N, {N}, DType::f32);
        Tensor over_a = make_tensor(a, {N, C}, dtype, gpu), out3 = poisoned(N * C, {N, C}, dtype);
        Tensor m3 = poisoned(N, {N}, DType::f32), s3 = poisoned(N, {N}, DType::f32);
        kernels::residual_add(r1, ga, gb, stream);
        kernels::layernorm_forward(out1, m1, s1, r1, w, bias, {}, stream);
        kernels::residual_layernorm_forward(r2, out2, m2, s2, ga, gb, w, bias, {}, stream);
        kernels::residual_layernorm_forward(over_a, out3, m3, s3, over_a, gb, w, bias, {}, stream);
        stream.synchronize();

        Vec residual = r1.to_vector(), out = out1.to_vector(), mean = m1.to_vector(), rstd = s1.to_vector();
        REQUIRE(all_finite(out));
        REQUIRE(all_finite(mean));
        REQUIRE(all_finite(rstd));
        struct Run { const Tensor *r, *out, *m, *s; };
        for (Run run : {Run{&r2, &out2, &m2, &s2}, Run{&over_a, &out3, &m3, &s3}}) {
          REQUIRE(same_bits(run.r->to_vector(), residual));
          REQUIRE(same_bits(run.out->to_vector(), out));
          REQUIRE(same_bits(run.m->to_vector(), mean));
          REQUIRE(same_bits(run.s->to_vector(), rstd));
        }

        // Against the CPU twin: the residual is one fp32 addition rounded to
        // the storage dtype, so exact; the LayerNorm of that stored residual
        // within the forward's tolerance.
        Vec want_residual(N * C);
        for (int64_t i = 0; i < N * C; i++) want_residual[i] = a[i] + b[i];
        if (dtype == DType::bf16) want_residual = rounded_to_bf16(want_residual);
        REQUIRE(same_bits(residual, want_residual));
        Inputs cpu_in = in;
        cpu_in.x = want_residual;
        Outputs want = run_cpu(cpu_in, N, C);
        Scales scale = error_scales(cpu_in, want, N, C);
        REQUIRE(rel_error(out, want.out) <= tol);
        REQUIRE(scaled_error(mean, want.mean, scale.mean) <= 1e-5);
        REQUIRE(rel_error(rstd, want.rstd) <= 1e-5);
      }
    }
  }
}
