// CPU conv2d (forward, backward data, backward filter) against a direct
// float64 convolution, on odd shapes (stride, padding, dilation, 1x1,
// kernels larger than the input); accumulation semantics; a float64
// finite-difference check of all three gradients; shape and argument checks.
#include <cmath>
#include <string>

#include "kernels/conv2d.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
using tandem::kernels::Conv2dShape;

namespace {

using Vec = std::vector<float>;

// Exact results, and the magnitude each was summed from (see scaled_error).
struct Reference {
  std::vector<double> out, out_scale;          // (N, K, P, Q)
  std::vector<double> dinp, dinp_scale;        // (N, C, H, W)
  std::vector<double> dweight, dweight_scale;  // (K, C, R, S), starting from dw0
  std::vector<double> dbias, dbias_scale;      // (K), starting from db0
};

// The definition itself, one multiply-add at a time in float64. bias empty:
// no bias.
Reference reference(const Vec& x, const Vec& w, const Vec& b, const Vec& dout, const Vec& dw0, const Vec& db0,
                    const Conv2dShape& s) {
  const int64_t P = s.P(), Q = s.Q();
  Reference r;
  r.out.assign(s.N * s.K * P * Q, 0.0), r.out_scale.assign(s.N * s.K * P * Q, 0.0);
  r.dinp.assign(s.N * s.C * s.H * s.W, 0.0), r.dinp_scale.assign(s.N * s.C * s.H * s.W, 0.0);
  r.dweight.assign(dw0.begin(), dw0.end()), r.dweight_scale.assign(dw0.size(), 0.0);
  r.dbias.assign(db0.begin(), db0.end()), r.dbias_scale.assign(db0.size(), 0.0);
  for (size_t i = 0; i < dw0.size(); i++) r.dweight_scale[i] = std::fabs(dw0[i]);
  for (size_t i = 0; i < db0.size(); i++) r.dbias_scale[i] = std::fabs(db0[i]);
  for (int64_t n = 0; n < s.N; n++)
    for (int64_t k = 0; k < s.K; k++)
      for (int64_t p = 0; p < P; p++)
        for (int64_t q = 0; q < Q; q++) {
          const int64_t o = ((n * s.K + k) * P + p) * Q + q;
          const double dy = dout[o];
          if (!b.empty()) r.out[o] = b[k], r.out_scale[o] = std::fabs(b[k]);
          r.dbias[k] += dy, r.dbias_scale[k] += std::fabs(dy);
          for (int64_t c = 0; c < s.C; c++)
            for (int64_t i = 0; i < s.R; i++)
              for (int64_t j = 0; j < s.S; j++) {
                const int64_t ih = p * s.stride_h - s.pad_h + i * s.dilation_h;
                const int64_t iw = q * s.stride_w - s.pad_w + j * s.dilation_w;
                if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;  // zero padding
                const int64_t xi = ((n * s.C + c) * s.H + ih) * s.W + iw, wi = ((k * s.C + c) * s.R + i) * s.S + j;
                const double t = static_cast<double>(x[xi]) * w[wi];
                r.out[o] += t, r.out_scale[o] += std::fabs(t);
                r.dinp[xi] += dy * w[wi], r.dinp_scale[xi] += std::fabs(dy * w[wi]);
                r.dweight[wi] += dy * x[xi], r.dweight_scale[wi] += std::fabs(dy * x[xi]);
              }
        }
  return r;
}

// fp32 GEMM error relative to the summed magnitudes: about (C*R*S or
// N*P*Q) * 2^-24 at worst for these sizes, far less in practice.
constexpr double kTol = 1e-5;

// Both sides, each with every field spelled out: the shapes walked below.
Conv2dShape conv(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t stride_h,
                 int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h = 1, int64_t dilation_w = 1) {
  return {.N = N, .C = C, .H = H, .W = W, .K = K, .R = R, .S = S, .stride_h = stride_h, .stride_w = stride_w,
          .pad_h = pad_h, .pad_w = pad_w, .dilation_h = dilation_h, .dilation_w = dilation_w};
}

const std::vector<Conv2dShape> kShapes = {
    conv(2, 3, 7, 5, 4, 3, 3, 1, 1, 1, 1),        // "same" 3x3
    conv(2, 3, 7, 5, 4, 3, 3, 2, 2, 0, 0),        // stride 2, no padding
    conv(2, 3, 7, 5, 4, 1, 1, 1, 1, 0, 0),        // pointwise: no im2col at all
    conv(2, 3, 7, 5, 4, 1, 1, 2, 2, 0, 0),        // 1x1 with stride: im2col again
    conv(2, 3, 7, 5, 4, 1, 1, 1, 1, 1, 0),        // 1x1 with padding: a border of bias only
    conv(2, 3, 9, 6, 5, 5, 3, 2, 1, 2, 1),        // 5x3, pad (2, 1), stride (2, 1)
    conv(2, 3, 9, 8, 4, 3, 3, 1, 1, 2, 2, 2, 2),  // dilation 2, "same"
    conv(1, 2, 11, 7, 3, 3, 2, 2, 1, 0, 1, 2, 3), // dilation (2, 3), stride (2, 1)
    conv(2, 3, 2, 3, 4, 5, 3, 1, 1, 2, 1),        // H smaller than the kernel, padded
    conv(2, 2, 5, 1, 3, 3, 3, 1, 2, 1, 1),        // W = 1, every window mostly padding
    conv(1, 1, 1, 1, 1, 3, 3, 1, 1, 1, 1),        // one pixel, one channel
    conv(2, 3, 8, 7, 2, 2, 2, 3, 3, 0, 0),        // stride 3 > kernel: pixels no window reads
    conv(3, 8, 13, 11, 16, 3, 3, 1, 1, 1, 1),     // bigger GEMMs
};

Tensor workspace_for(const Conv2dShape& s) {
  // NaN: the kernels must write every entry they read.
  return Tensor::from_vector(Vec(kernels::conv2d_workspace_elems(s), NAN), {kernels::conv2d_workspace_elems(s)});
}

Shape inp_shape(const Conv2dShape& s) { return {s.N, s.C, s.H, s.W}; }
Shape out_shape(const Conv2dShape& s) { return {s.N, s.K, s.P(), s.Q()}; }
Shape weight_shape(const Conv2dShape& s) { return {s.K, s.C, s.R, s.S}; }

// The CPU forward on plain vectors, with bias.
Vec forward(const Vec& x, const Vec& w, const Vec& b, const Conv2dShape& s) {
  Tensor out = Tensor::empty(out_shape(s), DType::f32, Device::cpu());
  kernels::conv2d_forward(out, Tensor::from_vector(x, inp_shape(s)), Tensor::from_vector(w, weight_shape(s)),
                          Tensor::from_vector(b, {s.K}), s, workspace_for(s), Stream());
  return out.to_vector();
}

// sum(out * R) in float64: the scalar whose gradient the backward computes
// when dout = R.
double objective(const Vec& out, const Vec& R) {
  double sum = 0;
  for (size_t i = 0; i < out.size(); i++) sum += static_cast<double>(out[i]) * R[i];
  return sum;
}

}  // namespace

TEST_CASE("conv2d output size follows PyTorch's formula", "[kernels][conv2d]") {
  REQUIRE(conv(1, 1, 7, 5, 1, 3, 3, 1, 1, 1, 1).P() == 7);
  REQUIRE(conv(1, 1, 7, 5, 1, 3, 3, 1, 1, 1, 1).Q() == 5);
  REQUIRE(conv(1, 1, 7, 5, 1, 3, 3, 2, 2, 0, 0).P() == 3);  // (7 - 3) / 2 + 1
  REQUIRE(conv(1, 1, 7, 5, 1, 3, 3, 2, 2, 0, 0).Q() == 2);  // (5 - 3) / 2 + 1
  REQUIRE(conv(1, 1, 9, 6, 1, 5, 3, 2, 1, 2, 1).P() == 5);  // (9 + 4 - 5) / 2 + 1
  REQUIRE(conv(1, 1, 9, 8, 1, 3, 3, 1, 1, 2, 2, 2, 2).Q() == 8);
  REQUIRE(conv(1, 1, 11, 7, 1, 3, 2, 2, 1, 0, 1, 2, 3).P() == 4);  // (11 - 4 - 1) / 2 + 1
  REQUIRE(conv(1, 1, 11, 7, 1, 3, 2, 2, 1, 0, 1, 2, 3).Q() == 6);  // (7 + 2 - 3 - 1) / 1 + 1
  // A kernel that does not fit: floor division gives 0, not C++'s 1.
  REQUIRE(conv(1, 1, 2, 2, 1, 5, 5, 2, 2, 0, 0).P() == 0);
  REQUIRE(kernels::conv2d_workspace_elems(conv(2, 3, 7, 5, 4, 3, 3, 1, 1, 1, 1)) == 3 * 3 * 3 * 7 * 5);
  REQUIRE(kernels::conv2d_flops(conv(2, 3, 7, 5, 4, 3, 3, 1, 1, 1, 1)) == 2.0 * 2 * 4 * 7 * 5 * 3 * 3 * 3);
}

TEST_CASE("cpu conv2d matches a direct float64 convolution", "[kernels][conv2d]") {
  for (const Conv2dShape& s : kShapes) {
    uint64_t seed = fresh_seed();
    INFO(s.str() << " seed=" << seed);
    const int64_t n_in = s.N * s.C * s.H * s.W, n_out = s.N * s.K * s.P() * s.Q(), n_w = s.K * s.C * s.R * s.S;
    Vec x = random_vector(n_in, seed), w = random_vector(n_w, seed + 1), b = random_vector(s.K, seed + 2),
        dout = random_vector(n_out, seed + 3), dw0 = random_vector(n_w, seed + 4), db0 = random_vector(s.K, seed + 5);
    Reference ref = reference(x, w, b, dout, dw0, db0, s);
    Tensor inp = Tensor::from_vector(x, inp_shape(s)), weight = Tensor::from_vector(w, weight_shape(s));
    Tensor workspace = workspace_for(s);

    // Outputs start as NaN: they must be overwritten.
    Tensor out = Tensor::from_vector(Vec(n_out, NAN), out_shape(s));
    kernels::conv2d_forward(out, inp, weight, Tensor::from_vector(b, {s.K}), s, workspace, Stream());
    REQUIRE(all_finite(out.to_vector()));
    REQUIRE(scaled_error(out.to_vector(), ref.out, ref.out_scale) <= kTol);

    // dinp starts as NaN: overwritten, also where no window reads. dweight
    // and dbias start non-zero: added to.
    Tensor dinp = Tensor::from_vector(Vec(n_in, NAN), inp_shape(s)), tdout = Tensor::from_vector(dout, out_shape(s));
    kernels::conv2d_backward_data(dinp, tdout, weight, s, workspace, Stream());
    REQUIRE(all_finite(dinp.to_vector()));
    REQUIRE(scaled_error(dinp.to_vector(), ref.dinp, ref.dinp_scale) <= kTol);

    Tensor dweight = Tensor::from_vector(dw0, weight_shape(s)), dbias = Tensor::from_vector(db0, {s.K});
    kernels::conv2d_backward_filter(dweight, dbias, tdout, inp, s, workspace, Stream());
    REQUIRE(all_finite(dweight.to_vector()));
    REQUIRE(scaled_error(dweight.to_vector(), ref.dweight, ref.dweight_scale) <= kTol);
    REQUIRE(scaled_error(dbias.to_vector(), ref.dbias, ref.dbias_scale) <= kTol);
  }
}

TEST_CASE("cpu conv2d skips an undefined bias and dbias, and gradients add up", "[kernels][conv2d]") {
  for (const Conv2dShape& s : {kShapes[0], kShapes[2]}) {  // im2col, and pointwise
    uint64_t seed = fresh_seed();
    INFO(s.str() << " seed=" << seed);
    const int64_t n_out = s.N * s.K * s.P() * s.Q(), n_w = s.K * s.C * s.R * s.S;
    Vec x = random_vector(s.N * s.C * s.H * s.W, seed), w = random_vector(n_w, seed + 1),
        dout = random_vector(n_out, seed + 2), dw0 = random_vector(n_w, seed + 3);
    Reference ref = reference(x, w, {}, dout, Vec(n_w, 0.f), Vec(s.K, 0.f), s);
    Tensor inp = Tensor::from_vector(x, inp_shape(s)), workspace = workspace_for(s);

    Tensor out = Tensor::from_vector(Vec(n_out, NAN), out_shape(s));
    kernels::conv2d_forward(out, inp, Tensor::from_vector(w, weight_shape(s)), Tensor(), s, workspace, Stream());
    REQUIRE(scaled_error(out.to_vector(), ref.out, ref.out_scale) <= kTol);

    // Two micro-batches of the same data: dweight = dw0 + 2 * gradient.
    Tensor dweight = Tensor::from_vector(dw0, weight_shape(s)), tdout = Tensor::from_vector(dout, out_shape(s));
    kernels::conv2d_backward_filter(dweight, Tensor(), tdout, inp, s, workspace, Stream());
    kernels::conv2d_backward_filter(dweight, Tensor(), tdout, inp, s, workspace, Stream());
    std::vector<double> want(n_w), scale(n_w);
    for (int64_t i = 0; i < n_w; i++)
      want[i] = dw0[i] + 2 * ref.dweight[i], scale[i] = std::fabs(dw0[i]) + 2 * ref.dweight_scale[i];
    REQUIRE(scaled_error(dweight.to_vector(), want, scale) <= kTol);
  }
}

TEST_CASE("cpu conv2d backward matches float64 finite differences", "[kernels][conv2d]") {
  // Small: every value of inp, weight and bias is stepped in turn.
  for (const Conv2dShape& s : {conv(2, 2, 5, 4, 3, 3, 2, 2, 1, 1, 1, 1, 2), kShapes[2], kShapes[8]}) {
    uint64_t seed = fresh_seed();
    INFO(s.str() << " seed=" << seed);
    const int64_t n_out = s.N * s.K * s.P() * s.Q();
    Vec x = random_vector(s.N * s.C * s.H * s.W, seed), w = random_vector(s.K * s.C * s.R * s.S, seed + 1),
        b = random_vector(s.K, seed + 2), R = random_vector(n_out, seed + 3);
    Tensor inp = Tensor::from_vector(x, inp_shape(s)), workspace = workspace_for(s), dout = Tensor::from_vector(R, out_shape(s));
    Tensor dinp = Tensor::empty(inp_shape(s), DType::f32, Device::cpu());
    Tensor dweight = Tensor::zeros(weight_shape(s), DType::f32, Device::cpu());
    Tensor dbias = Tensor::zeros({s.K}, DType::f32, Device::cpu());
    kernels::conv2d_backward_data(dinp, dout, Tensor::from_vector(w, weight_shape(s)), s, workspace, Stream());
    kernels::conv2d_backward_filter(dweight, dbias, dout, inp, s, workspace, Stream());

    // Central differences of sum(out * R) in float64 over the f32 forward.
    // The loss is linear in each value, so only the forward's fp32 rounding
    // separates the quotient from the gradient.
    auto loss = [&] { return objective(forward(x, w, b, s), R); };
    auto numeric = [&](Vec& param) { return numerical_gradient(param, loss); };
    REQUIRE(rel_error(dinp.to_vector(), numeric(x)) <= 1e-3);
    REQUIRE(rel_error(dweight.to_vector(), numeric(w)) <= 1e-3);
    REQUIRE(rel_error(dbias.to_vector(), numeric(b)) <= 1e-3);
  }
}

TEST_CASE("conv2d shape check names what is wrong", "[kernels][conv2d]") {
  const Conv2dShape good = kShapes[0];
  REQUIRE_NOTHROW(kernels::check_conv2d_shape(good));
  auto bad = [&](auto edit) {
    Conv2dShape s = good;
    edit(s);
    return s;
  };
  using Catch::Contains;
  REQUIRE_THROWS_AS(kernels::check_conv2d_shape(bad([](Conv2dShape& s) { s.N = 0; })), UserError);
  REQUIRE_THROWS_WITH(kernels::check_conv2d_shape(bad([](Conv2dShape& s) { s.N = 0; })), Contains("must all be positive"));
  REQUIRE_THROWS_WITH(kernels::check_conv2d_shape(bad([](Conv2dShape& s) { s.K = -1; })), Contains("must all be positive"));
  REQUIRE_THROWS_WITH(kernels::check_conv2d_shape(bad([](Conv2dShape& s) { s.S = 0; })), Contains("K=4 R=3 S=0"));
  REQUIRE_THROWS_WITH(kernels::check_conv2d_shape(bad([](Conv2dShape& s) { s.stride_w = 0; })),
                      Contains("strides must be positive"));
  REQUIRE_THROWS_WITH(kernels::check_conv2d_shape(bad([](Conv2dShape& s) { s.dilation_h = 0; })),
                      Contains("dilations must be positive"));
  REQUIRE_THROWS_WITH(kernels::check_conv2d_shape(bad([](Conv2dShape& s) { s.pad_h = -1; })),
                      Contains("padding must not be negative"));
  // 7 + 2 < (3 - 1) * 5 + 1: the dilated kernel covers more than the padded input.
  REQUIRE_THROWS_WITH(kernels::check_conv2d_shape(bad([](Conv2dShape& s) { s.dilation_h = 5; })),
                      Contains("empty output") && Contains("(11 x 3)") && Contains("(9 x 7)"));
  REQUIRE_THROWS_AS(kernels::check_conv2d_shape(Conv2dShape{}), UserError);  // all zero
  // A bad shape fails before any tensor is looked at.
  REQUIRE_THROWS_AS(kernels::conv2d_forward(Tensor(), Tensor(), Tensor(), Tensor(), Conv2dShape{}, Tensor(), Stream()),
                    UserError);
}

TEST_CASE("cpu conv2d rejects tensors that do not match the shape", "[kernels][conv2d]") {
  const Conv2dShape s = kShapes[0];  // N=2 C=3 H=7 W=5 K=4 R=S=3, P=7 Q=5
  auto zeros = [](Shape shape) { return Tensor::zeros(std::move(shape), DType::f32, Device::cpu()); };
  Tensor inp = zeros(inp_shape(s)), weight = zeros(weight_shape(s)), bias = zeros({s.K}), out = zeros(out_shape(s));
  Tensor ws = zeros({kernels::conv2d_workspace_elems(s)});
  auto fwd = [&](const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& work) {
    kernels::conv2d_forward(y, x, w, b, s, work, Stream());
  };
  using Catch::Contains;
  REQUIRE_NOTHROW(fwd(out, inp, weight, bias, ws));
  REQUIRE_NOTHROW(fwd(out, inp, weight, bias, zeros({kernels::conv2d_workspace_elems(s) + 5})));  // more is fine
  REQUIRE_THROWS_WITH(fwd(zeros({2, 4, 5, 7}), inp, weight, bias, ws), Contains("out must be [2, 4, 7, 5]"));
  REQUIRE_THROWS_WITH(fwd(out, inp.reshape({2, 3, 35}), weight, bias, ws), Contains("inp must be"));  // same numel
  REQUIRE_THROWS_WITH(fwd(out, inp, zeros({3, 4, 3, 3}), bias, ws), Contains("weight must be"));       // (C, K, ..)
  REQUIRE_THROWS_WITH(fwd(out, inp, weight, zeros({3}), ws), Contains("bias must be"));
  REQUIRE_THROWS_WITH(fwd(out, inp, weight, bias, zeros({kernels::conv2d_workspace_elems(s) - 1})),
                      Contains("workspace holds"));
  REQUIRE_THROWS_WITH(fwd(out, inp, weight, bias, Tensor()), Contains("workspace is undefined"));
  REQUIRE_THROWS_WITH(fwd(out, Tensor(), weight, bias, ws), Contains("inp is undefined"));
  REQUIRE_THROWS_WITH(fwd(out, Tensor::zeros(inp_shape(s), DType::bf16, Device::cpu()), weight, bias, ws),
                      Contains("inp must be f32"));
  REQUIRE_THROWS_WITH(fwd(out, inp, weight, bias, Tensor::zeros({ws.numel()}, DType::i32, Device::cpu())),
                      Contains("workspace must be f32"));
  // Overlaps: an output over an input or the workspace.
  Tensor big = zeros({s.N * s.K * s.P() * s.Q() + ws.numel()});
  REQUIRE_THROWS_WITH(fwd(big.view(0, out_shape(s)), inp, weight, bias, big.view(out.numel() - 1, {ws.numel()})),
                      Contains("out overlaps the workspace"));
  REQUIRE_NOTHROW(fwd(big.view(0, out_shape(s)), inp, weight, bias, big.view(out.numel(), {ws.numel()})));

  Tensor dinp = zeros(inp_shape(s)), dweight = zeros(weight_shape(s)), dbias = zeros({s.K});
  REQUIRE_NOTHROW(kernels::conv2d_backward_data(dinp, out, weight, s, ws, Stream()));
  REQUIRE_THROWS_WITH(kernels::conv2d_backward_data(dinp, inp, weight, s, ws, Stream()), Contains("dout must be"));
  REQUIRE_THROWS_WITH(kernels::conv2d_backward_data(dinp, out, weight, s, zeros({3}), Stream()),
                      Contains("workspace holds"));
  Tensor shared = zeros({out.numel() + dinp.numel()});  // dout's last element is dinp's first
  REQUIRE_THROWS_WITH(kernels::conv2d_backward_data(shared.view(out.numel() - 1, inp_shape(s)),
                                                    shared.view(0, out_shape(s)), weight, s, ws, Stream()),
                      Contains("dinp overlaps dout"));
  REQUIRE_NOTHROW(kernels::conv2d_backward_filter(dweight, dbias, out, inp, s, ws, Stream()));
  REQUIRE_NOTHROW(kernels::conv2d_backward_filter(dweight, Tensor(), out, inp, s, ws, Stream()));
  REQUIRE_THROWS_WITH(kernels::conv2d_backward_filter(dweight, zeros({s.C}), out, inp, s, ws, Stream()),
                      Contains("dbias must be"));
  REQUIRE_THROWS_WITH(kernels::conv2d_backward_filter(zeros({s.K, s.C * s.R * s.S}), dbias, out, inp, s, ws, Stream()),
                      Contains("dweight must be"));
  REQUIRE_THROWS_WITH(kernels::conv2d_backward_filter(dweight, dweight.view(0, {s.K}), out, inp, s, ws, Stream()),
                      Contains("dweight overlaps dbias"));
  // A shape that disagrees with the tensors: out is (N, K, P, Q) of another P.
  Conv2dShape strided = s;
  strided.stride_h = 2;
  REQUIRE_THROWS_WITH(kernels::conv2d_forward(out, inp, weight, bias, strided, ws, Stream()),
                      Contains("out must be [2, 4, 4, 5]"));
}
