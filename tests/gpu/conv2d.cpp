// CUDA conv2d (cuDNN) against the CPU twin: f32 tightly (no TF32), bf16 and
// f16 within their rounding; odd sizes, strides, padding, dilation, 1x1 and
// a kernel wider than the input; overwrite (dinp) and accumulate (dweight,
// dbias) semantics; bitwise repeatability; a clear error for an unsupported
// dtype; and the Conv2d module on CUDA against the same module on the CPU.

#include "kernels/conv2d.h"
#include "runtime/vision_layers.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
using tandem::kernels::Conv2dShape;

namespace {

// A tensor of `dtype` (f32, bf16 or f16) on `device` holding `values`.
Tensor upload(const std::vector<float>& values, Shape shape, DType dtype, Device device) {
  return make_tensor(values, std::move(shape), dtype, device);
}

// The raw bytes of a tensor (sync), for bitwise comparisons.
std::string bytes_of(const Tensor& t) {
  Tensor host = t.to(Device::cpu());
  return std::string(static_cast<const char*>(host.data()), host.nbytes());
}

std::vector<float> poison(int64_t n) { return std::vector<float>(n, NAN); }

Shape inp_shape(const Conv2dShape& s) { return {s.N, s.C, s.H, s.W}; }
Shape out_shape(const Conv2dShape& s) { return {s.N, s.K, s.P(), s.Q()}; }
Shape weight_shape(const Conv2dShape& s) { return {s.K, s.C, s.R, s.S}; }

// Odd sizes, strides, padding and dilation; a 1x1 (cuDNN's GEMM-like path);
// a kernel wider than the unpadded input; channels that are multiples of 8
// (tensor-core algorithms for bf16 and f16); and a single pixel.
const std::vector<Conv2dShape> kShapes = {
    {.N = 2, .C = 3, .H = 7, .W = 5, .K = 4, .R = 3, .S = 3, .stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1},
    {.N = 3, .C = 5, .H = 6, .W = 7, .K = 9, .R = 1, .S = 1, .stride_h = 1, .stride_w = 1},
    {.N = 2, .C = 4, .H = 13, .W = 11, .K = 6, .R = 3, .S = 2, .stride_h = 2, .stride_w = 3, .pad_h = 2, .pad_w = 1,
     .dilation_h = 2, .dilation_w = 1},
    {.N = 2, .C = 3, .H = 3, .W = 4, .K = 5, .R = 5, .S = 5, .stride_h = 1, .stride_w = 1, .pad_h = 2, .pad_w = 2},
    {.N = 4, .C = 33, .H = 17, .W = 19, .K = 31, .R = 5, .S = 5, .stride_h = 2, .stride_w = 2, .pad_h = 2, .pad_w = 2},
    {.N = 8, .C = 64, .H = 14, .W = 14, .K = 64, .R = 3, .S = 3, .stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1},
    {.N = 1, .C = 1, .H = 1, .W = 1, .K = 1, .R = 1, .S = 1, .stride_h = 1, .stride_w = 1},
};

// Relative to the summed magnitudes of each result's terms: f32 differs
// from OpenBLAS only in the order of additions (no TF32); bf16 and f16
// round every stored result (2^-9, 2^-11) and cuDNN may keep partial sums
// in them.
double tolerance(DType dtype) { return dtype == DType::f32 ? 1e-5 : dtype == DType::f16 ? 5e-3 : 1e-2; }

// One problem: its inputs (rounded to the dtype), the CPU twin's results,
// and the same ops on absolute values, the scales for scaled_error.
struct Case {
  Conv2dShape s;
  DType dtype;
  std::vector<float> x, w, b, dout, dw0, db0;
  struct Results {
    std::vector<float> out, dinp, dweight, dbias;
  } cpu, scale;

  Case(const Conv2dShape& s_, DType dtype_, uint64_t seed) : s(s_), dtype(dtype_) {
    const int64_t nx = s.N * s.C * s.H * s.W, nw = s.K * s.C * s.R * s.S, ny = s.N * s.K * s.P() * s.Q();
    x = rounded(random_vector(nx, seed), dtype), w = rounded(random_vector(nw, seed + 1), dtype);
    b = rounded(random_vector(s.K, seed + 2), dtype), dout = rounded(random_vector(ny, seed + 3), dtype);
    dw0 = rounded(random_vector(nw, seed + 4), dtype), db0 = rounded(random_vector(s.K, seed + 5), dtype);
    cpu = run_cpu(x, w, b, dout, dw0, db0);
    scale = run_cpu(abs_of(x), abs_of(w), abs_of(b), abs_of(dout), abs_of(dw0), abs_of(db0));
  }

  Results run_cpu(const std::vector<float>& x_, const std::vector<float>& w_, const std::vector<float>& b_,
                  const std::vector<float>& dout_, const std::vector<float>& dw0_,
                  const std::vector<float>& db0_) const {
    Tensor ws = Tensor::empty({kernels::conv2d_workspace_elems(s)}, DType::f32, Device::cpu());
    Tensor inp = Tensor::from_vector(x_, inp_shape(s)), weight = Tensor::from_vector(w_, weight_shape(s));
    Tensor out = Tensor::empty(out_shape(s), DType::f32, Device::cpu());
    kernels::conv2d_forward(out, inp, weight, Tensor::from_vector(b_, {s.K}), s, ws, Stream());
    Tensor dinp = Tensor::empty(inp_shape(s), DType::f32, Device::cpu());
    Tensor dy = Tensor::from_vector(dout_, out_shape(s));
    kernels::conv2d_backward_data(dinp, dy, weight, s, ws, Stream());
    Tensor dweight = Tensor::from_vector(dw0_, weight_shape(s)), dbias = Tensor::from_vector(db0_, {s.K});
    kernels::conv2d_backward_filter(dweight, dbias, dy, inp, s, ws, Stream());
    return {out.to_vector(), dinp.to_vector(), dweight.to_vector(), dbias.to_vector()};
  }
};

// The three calls on the GPU from Case's inputs: out and dinp poisoned (they
// must be overwritten, never read), dweight and dbias starting from dw0 and
// db0 (they must accumulate). Every tensor lives in the struct, so none is
// freed while the stream may still use it.
struct GpuRun {
  Tensor inp, weight, bias, dout, out, dinp, dweight, dbias, workspace;

  GpuRun(const Case& c, Device gpu, const Stream& stream) {
    const Conv2dShape& s = c.s;
    inp = upload(c.x, inp_shape(s), c.dtype, gpu), weight = upload(c.w, weight_shape(s), c.dtype, gpu);
    bias = upload(c.b, {s.K}, c.dtype, gpu), dout = upload(c.dout, out_shape(s), c.dtype, gpu);
    out = upload(poison(s.N * s.K * s.P() * s.Q()), out_shape(s), c.dtype, gpu);
    dinp = upload(poison(s.N * s.C * s.H * s.W), inp_shape(s), c.dtype, gpu);
    dweight = upload(c.dw0, weight_shape(s), c.dtype, gpu), dbias = upload(c.db0, {s.K}, c.dtype, gpu);
    workspace = Tensor::empty({kernels::conv2d_workspace_elems(s, c.dtype, gpu)}, DType::f32, gpu);
    kernels::conv2d_forward(out, inp, weight, bias, s, workspace, stream);
    kernels::conv2d_backward_data(dinp, dout, weight, s, workspace, stream);
    kernels::conv2d_backward_filter(dweight, dbias, dout, inp, s, workspace, stream);
    stream.synchronize();
  }
};

void require_close(const std::vector<float>& got, const std::vector<float>& want, const std::vector<float>& scale,
                   DType dtype, const char* what) {
  INFO(what);
  REQUIRE(all_finite(got));
  REQUIRE(scaled_error(got, want, scale) <= tolerance(dtype));
}

}  // namespace

TEST_CASE("cuda conv2d matches the cpu twin", "[gpu][conv2d]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    for (const Conv2dShape& s : kShapes) {
      uint64_t seed = fresh_seed();
      INFO("dtype=" << dtype_name(dtype) << " " << s.str() << " seed=" << seed);
      Case c(s, dtype, seed);
      GpuRun g(c, gpu, stream);
      require_close(download(g.out), c.cpu.out, c.scale.out, dtype, "out");
      require_close(download(g.dinp), c.cpu.dinp, c.scale.dinp, dtype, "dinp");
      require_close(download(g.dweight), c.cpu.dweight, c.scale.dweight, dtype, "dweight");
      require_close(download(g.dbias), c.cpu.dbias, c.scale.dbias, dtype, "dbias");
    }
  }
}

TEST_CASE("cuda conv2d without bias leaves the output unbiased and dbias alone", "[gpu][conv2d]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  const Conv2dShape s = kShapes[2];
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  Case c(s, DType::f32, seed);
  Tensor inp = upload(c.x, inp_shape(s), DType::f32, gpu), weight = upload(c.w, weight_shape(s), DType::f32, gpu);
  Tensor dout = upload(c.dout, out_shape(s), DType::f32, gpu);
  Tensor out = upload(poison(c.dout.size()), out_shape(s), DType::f32, gpu);
  Tensor dweight = upload(c.dw0, weight_shape(s), DType::f32, gpu);
  Tensor ws = Tensor::empty({kernels::conv2d_workspace_elems(s, DType::f32, gpu)}, DType::f32, gpu);
  kernels::conv2d_forward(out, inp, weight, Tensor(), s, ws, stream);
  kernels::conv2d_backward_filter(dweight, Tensor(), dout, inp, s, ws, stream);
  stream.synchronize();
  // The CPU twin without the bias: its forward with b = 0.
  Case::Results want = c.run_cpu(c.x, c.w, std::vector<float>(s.K, 0.f), c.dout, c.dw0, c.db0);
  require_close(download(out), want.out, c.scale.out, DType::f32, "out");
  require_close(download(dweight), want.dweight, c.scale.dweight, DType::f32, "dweight");
}

// Deterministic algorithms and fixed-order bias sums: the same calls give
// the same bits, so training on the GPU is bitwise reproducible.
TEST_CASE("cuda conv2d is bitwise repeatable", "[gpu][conv2d]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    for (const Conv2dShape& s : {kShapes[4], kShapes[5]}) {
      uint64_t seed = fresh_seed();
      INFO("dtype=" << dtype_name(dtype) << " " << s.str() << " seed=" << seed);
      Case c(s, dtype, seed);
      GpuRun first(c, gpu, stream), second(c, gpu, stream);
      REQUIRE(bytes_of(first.out) == bytes_of(second.out));
      REQUIRE(bytes_of(first.dinp) == bytes_of(second.dinp));
      REQUIRE(bytes_of(first.dweight) == bytes_of(second.dweight));
      REQUIRE(bytes_of(first.dbias) == bytes_of(second.dbias));
    }
  }
}

TEST_CASE("cuda conv2d sizes its workspace per dtype and rejects what it cannot run", "[gpu][conv2d]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  const Conv2dShape s = kShapes[0];
  using Catch::Contains;
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    int64_t elems = kernels::conv2d_workspace_elems(s, dtype, gpu);
    REQUIRE(elems >= 1);
    REQUIRE(kernels::conv2d_workspace_elems(s, dtype, gpu) == elems);  // the cached plan
  }
  auto on_gpu = [&](Shape shape, DType dtype) { return Tensor::zeros(std::move(shape), dtype, gpu); };
  Tensor ws = on_gpu({kernels::conv2d_workspace_elems(s, DType::f32, gpu)}, DType::f32);
  Tensor out = on_gpu(out_shape(s), DType::f32), inp = on_gpu(inp_shape(s), DType::f32);
  Tensor weight = on_gpu(weight_shape(s), DType::f32);
  REQUIRE_NOTHROW(kernels::conv2d_forward(out, inp, weight, Tensor(), s, ws, stream));
  // An integer dtype is a UserError that names what CUDA takes.
  REQUIRE_THROWS_AS(kernels::conv2d_forward(on_gpu(out_shape(s), DType::i32), on_gpu(inp_shape(s), DType::i32),
                                            on_gpu(weight_shape(s), DType::i32), Tensor(), s, ws, stream),
                    UserError);
  REQUIRE_THROWS_WITH(kernels::conv2d_forward(on_gpu(out_shape(s), DType::i32), on_gpu(inp_shape(s), DType::i32),
                                              on_gpu(weight_shape(s), DType::i32), Tensor(), s, ws, stream),
                      Contains("conv2d on CUDA takes f32, bf16 or f16"));
  // Mixed dtypes, a short or non-f32 workspace, a CPU tensor, overlaps.
  REQUIRE_THROWS_WITH(kernels::conv2d_forward(out, on_gpu(inp_shape(s), DType::bf16), weight, Tensor(), s, ws, stream),
                      Contains("inp must be f32 as out, got bf16"));
  if (ws.numel() > 1)  // cuDNN may need no workspace at all for this shape
    REQUIRE_THROWS_WITH(
        kernels::conv2d_forward(out, inp, weight, Tensor(), s, on_gpu({ws.numel() - 1}, DType::f32), stream),
        Contains("workspace holds"));
  REQUIRE_THROWS_WITH(kernels::conv2d_forward(out, inp, weight, Tensor(), s, on_gpu({ws.numel()}, DType::bf16), stream),
                      Contains("workspace must be f32"));
  REQUIRE_THROWS_AS(kernels::conv2d_forward(out, Tensor::zeros(inp_shape(s), DType::f32, Device::cpu()), weight,
                                            Tensor(), s, ws, stream),
                    Error);
  Tensor big = on_gpu({inp.numel() + ws.numel()}, DType::f32);  // dinp's last element is the workspace's first
  REQUIRE_THROWS_WITH(kernels::conv2d_backward_data(big.view(0, inp_shape(s)), out, weight, s,
                                                    big.view(inp.numel() - 1, {ws.numel()}), stream),
                      Contains("dinp overlaps the workspace"));
  stream.synchronize();
}

// The Conv2d module (runtime/vision_layers.h) on CUDA sizes its workspace
// for cuDNN and gives the CPU module's output, input gradient and parameter
// gradients, from the same weights.
TEST_CASE("the Conv2d module on cuda matches the module on the cpu", "[gpu][conv2d][modules]") {
  Device gpu = Device::cuda(0);
  const Conv2dOptions opt{.kernel = 3, .stride = 2, .padding = 1, .bias = true};
  const Shape x_shape = {3, 4, 11, 9};
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  std::vector<float> x = random_vector(shape_numel(x_shape), seed + 1);
  struct Result {
    std::vector<float> out, dx;
    std::vector<std::vector<float>> grads;
  };
  auto run = [&](Device device) {
    ParameterSet params;
    Conv2d m(params, "conv", 4, 6, opt);
    params.allocate(device, DType::f32, seed);
    Context ctx;
    ctx.device = device;
    ctx.stream = Stream::create(device);
    Tensor input = make_tensor(x, x_shape, DType::f32, device);
    Tensor out = m.forward(input, ctx);
    std::vector<float> dout = random_vector(out.numel(), seed + 2);
    Tensor grad = make_tensor(dout, out.shape(), DType::f32, device);
    Tensor dx = m.backward(grad, ctx);
    ctx.stream.synchronize();
    Result r{out.to_vector(), dx.to_vector(), {}};
    for (const Parameter& p : params.list()) r.grads.push_back(p.grad.to_vector());
    return r;
  };
  Result cpu = run(Device::cpu()), cuda = run(gpu);
  REQUIRE(all_finite(cuda.out));
  REQUIRE(unit_scaled_error(cuda.out, cpu.out) <= 1e-5);
  REQUIRE(unit_scaled_error(cuda.dx, cpu.dx) <= 1e-5);
  REQUIRE(cuda.grads.size() == cpu.grads.size());
  for (size_t i = 0; i < cpu.grads.size(); i++) REQUIRE(unit_scaled_error(cuda.grads[i], cpu.grads[i]) <= 1e-5);
}
