// CUDA lstm (cuDNN) against the CPU twin: f32 tightly (no TF32), f16 and
// bf16 (where the loaded cuDNN has it) within their rounding; odd sizes;
// with and without initial states and final-state gradients; overwrite
// (dx, dh0, dc0) and accumulate (dw_*, db_*) semantics; bitwise
// repeatability; a clear error for an unsupported dtype; the batch/sequence
// transpose; and the LSTM module on CUDA against the same module on the CPU.
#include <cmath>

#include "kernels/lstm.h"
#include "runtime/lstm_layer.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
using tandem::kernels::LstmShape;

namespace {

using Vec = std::vector<float>;

// A tensor of `dtype` (f32, bf16 or f16) on `device` holding `values`;
// undefined for an empty `values` (an optional tensor not given).
Tensor upload(const Vec& values, Shape shape, DType dtype, Device device) {
  return values.empty() ? Tensor() : make_tensor(values, std::move(shape), dtype, device);
}

// Bitwise equality (f16 and bf16 widen to float exactly, so equal floats
// are equal stored bits).
bool same_bits(const Vec& a, const Vec& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

Vec poison(int64_t n) { return Vec(n, NAN); }

// Odd on purpose: one of everything; several steps; one sequence; a hidden
// size off every tile; and one large enough for cuDNN's tensor-core paths
// (multiples of 8).
const std::vector<LstmShape> kShapes = {
    {.T = 1, .N = 1, .I = 1, .H = 1},   {.T = 7, .N = 3, .I = 5, .H = 4},    {.T = 6, .N = 1, .I = 3, .H = 5},
    {.T = 13, .N = 4, .I = 17, .H = 24}, {.T = 5, .N = 2, .I = 3, .H = 130}, {.T = 40, .N = 8, .I = 64, .H = 64},
};

// Against the CPU twin, as unit_scaled_error. f32: both sides round in fp32
// (no TF32 on the GPU), and the steps are contractive; backward adds sums
// over T*N rows (the bounds of tests/kernels/lstm.cpp). f16 and bf16: every
// stored h_t, c_t and gate gradient is rounded (2^-11, 2^-9) and fed to the
// next step.
struct Tolerance {
  double forward, backward;
};
Tolerance tolerance(DType dtype) {
  if (dtype == DType::f32) return {1e-5, 5e-5};
  if (dtype == DType::f16) return {1e-2, 2e-2};
  return {4e-2, 8e-2};
}

// One problem's values (rounded to the dtype). With `states`, h0, c0, dhT
// and dcT are given and hT, cT, dh0, dc0 asked for; without, all of them
// are left undefined (zeros in, nothing out).
struct Case {
  LstmShape s;
  DType dtype;
  bool states;
  Vec x, h0, c0, w_ih, w_hh, b_ih, b_hh, dy, dhT, dcT, dw_ih0, dw_hh0, db_ih0, db_hh0;

  Case(const LstmShape& s_, DType dtype_, bool states_, uint64_t seed) : s(s_), dtype(dtype_), states(states_) {
    const int64_t G = 4 * s.H, NH = s.N * s.H;
    const float bound = 1.f / std::sqrt(static_cast<float>(s.H));  // nn.LSTM's initialisation
    auto draw = [&](int64_t n, uint64_t k, float lo, float hi) {
      return rounded(random_vector(n, seed + k, lo, hi), dtype);
    };
    x = draw(s.T * s.N * s.I, 0, -1.f, 1.f), dy = draw(s.T * NH, 1, -1.f, 1.f);
    w_ih = draw(G * s.I, 2, -bound, bound), w_hh = draw(G * s.H, 3, -bound, bound);
    b_ih = draw(G, 4, -bound, bound), b_hh = draw(G, 5, -bound, bound);
    dw_ih0 = draw(G * s.I, 6, -1.f, 1.f), dw_hh0 = draw(G * s.H, 7, -1.f, 1.f);
    db_ih0 = draw(G, 8, -1.f, 1.f), db_hh0 = draw(G, 9, -1.f, 1.f);
    if (!states) return;
    h0 = draw(NH, 10, -1.f, 1.f), c0 = draw(NH, 11, -2.f, 2.f);  // a cell state may exceed 1
    dhT = draw(NH, 12, -1.f, 1.f), dcT = draw(NH, 13, -1.f, 1.f);
  }
};

// What forward and backward wrote, as floats on the host.
struct Results {
  Vec y, hT, cT, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh;
};

// Forward then backward on `device`: the CPU in f32, or CUDA in c.dtype.
// Outputs and scratch start as NaN (they must be written before being
// read); the gradients of the weights start from dw0 (they accumulate).
Results run(const Case& c, Device device, const Stream& stream) {
  const LstmShape& s = c.s;
  const DType dtype = device.is_cpu() ? DType::f32 : c.dtype;
  const int64_t G = 4 * s.H, NH = s.N * s.H;
  const Shape seq_in = {s.T, s.N, s.I}, seq_out = {s.T, s.N, s.H}, state = {s.N, s.H};
  auto in = [&](const Vec& v, Shape shape) { return upload(v, std::move(shape), dtype, device); };
  auto out = [&](Shape shape) { return c.states ? in(poison(shape_numel(shape)), shape) : Tensor(); };
  auto scratch = [&](int64_t elems) { return make_tensor(poison(elems), {elems}, DType::f32, device); };

  Tensor x = in(c.x, seq_in), h0 = in(c.h0, state), c0 = in(c.c0, state);
  const kernels::LstmWeights w{in(c.w_ih, {G, s.I}), in(c.w_hh, {G, s.H}), in(c.b_ih, {G}), in(c.b_hh, {G})};
  Tensor y = in(poison(s.T * NH), seq_out), hT = out(state), cT = out(state);
  Tensor reserve = scratch(kernels::lstm_reserve_elems(s, dtype, device));
  Tensor workspace = scratch(kernels::lstm_workspace_elems(s, dtype, device));
  kernels::lstm_forward(y, {hT, cT}, reserve, x, {h0, c0}, w, s, workspace, stream);

  Tensor dy = in(c.dy, seq_out), dhT = in(c.dhT, state), dcT = in(c.dcT, state);
  Tensor dx = in(poison(s.T * s.N * s.I), seq_in), dh0 = out(state), dc0 = out(state);
  const kernels::LstmGrads g{in(c.dw_ih0, {G, s.I}), in(c.dw_hh0, {G, s.H}), in(c.db_ih0, {G}), in(c.db_hh0, {G})};
  kernels::lstm_backward(dx, {dh0, dc0}, g, dy, {dhT, dcT}, x, {h0, Tensor()}, w, y, reserve, s, workspace, stream);
  stream.synchronize();
  return {download(y),  download(hT), download(cT),    download(dx),    download(dh0),
          download(dc0), download(g.dw_ih), download(g.dw_hh), download(g.db_ih), download(g.db_hh)};
}

void require_close(const Vec& got, const Vec& want, double tol, const char* what) {
  INFO(what);
  REQUIRE(got.size() == want.size());
  REQUIRE(all_finite(got));
  REQUIRE(unit_scaled_error(got, want) <= tol);
}

// bf16 LSTMs need cuDNN 9.13; an older one must say so with a UserError.
// Returns false (after checking that message, and saying so in the test
// output) when the loaded cuDNN has none.
bool bf16_available(Device gpu, const Stream& stream) {
  try {
    run(Case(kShapes[1], DType::bf16, true, fresh_seed()), gpu, stream);
    return true;
  } catch (const UserError& e) {
    REQUIRE_THAT(e.what(), Catch::Contains("bf16"));
    WARN("bf16 LSTM not checked: " << e.what());
    return false;
  }
}

}  // namespace

TEST_CASE("cuda lstm matches the cpu twin", "[gpu][lstm]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  for (DType dtype : {DType::f32, DType::f16, DType::bf16}) {
    if (dtype == DType::bf16 && !bf16_available(gpu, stream)) continue;
    for (const LstmShape& s : kShapes) {
      for (bool states : {true, false}) {
        uint64_t seed = fresh_seed();
        INFO("dtype=" << dtype_name(dtype) << " " << s.str() << " states=" << states << " seed=" << seed);
        Case c(s, dtype, states, seed);
        Results want = run(c, Device::cpu(), Stream()), got = run(c, gpu, stream);
        const Tolerance tol = tolerance(dtype);
        require_close(got.y, want.y, tol.forward, "y");
        require_close(got.hT, want.hT, tol.forward, "hT");
        require_close(got.cT, want.cT, tol.forward, "cT");
        require_close(got.dx, want.dx, tol.backward, "dx");
        require_close(got.dh0, want.dh0, tol.backward, "dh0");
        require_close(got.dc0, want.dc0, tol.backward, "dc0");
        require_close(got.dw_ih, want.dw_ih, tol.backward, "dw_ih");
        require_close(got.dw_hh, want.dw_hh, tol.backward, "dw_hh");
        require_close(got.db_ih, want.db_ih, tol.backward, "db_ih");
        require_close(got.db_hh, want.db_hh, tol.backward, "db_hh");
      }
    }
  }
}

// Two identical forward + backward pairs give the same bits: cuDNN's RNN
// and the weight-space copies are deterministic, so GPU training is
// bitwise reproducible.
TEST_CASE("cuda lstm is bitwise repeatable", "[gpu][lstm]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  for (DType dtype : {DType::f32, DType::f16}) {
    for (const LstmShape& s : {kShapes[3], kShapes[5]}) {
      uint64_t seed = fresh_seed();
      INFO("dtype=" << dtype_name(dtype) << " " << s.str() << " seed=" << seed);
      Case c(s, dtype, true, seed);
      Results first = run(c, gpu, stream), second = run(c, gpu, stream);
      REQUIRE(same_bits(first.y, second.y));
      REQUIRE(same_bits(first.hT, second.hT));
      REQUIRE(same_bits(first.cT, second.cT));
      REQUIRE(same_bits(first.dx, second.dx));
      REQUIRE(same_bits(first.dh0, second.dh0));
      REQUIRE(same_bits(first.dc0, second.dc0));
      REQUIRE(same_bits(first.dw_ih, second.dw_ih));
      REQUIRE(same_bits(first.dw_hh, second.dw_hh));
      REQUIRE(same_bits(first.db_ih, second.db_ih));
      REQUIRE(same_bits(first.db_hh, second.db_hh));
    }
  }
}

TEST_CASE("cuda lstm sizes its buffers per dtype and rejects what it cannot run", "[gpu][lstm]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  const LstmShape s = kShapes[1];
  const int64_t G = 4 * s.H;
  for (DType dtype : {DType::f32, DType::f16}) {
    REQUIRE(kernels::lstm_reserve_elems(s, dtype, gpu) >= 1);
    REQUIRE(kernels::lstm_workspace_elems(s, dtype, gpu) >= 1);
    REQUIRE(kernels::lstm_reserve_elems(s, dtype, gpu) == kernels::lstm_reserve_elems(s, dtype, gpu));
  }
  auto on_gpu = [&](Shape shape, DType dtype) { return Tensor::zeros(std::move(shape), dtype, gpu); };
  auto layer = [&](DType dtype) {
    return kernels::LstmWeights{on_gpu({G, s.I}, dtype), on_gpu({G, s.H}, dtype), on_gpu({G}, dtype),
                                on_gpu({G}, dtype)};
  };
  Tensor reserve = on_gpu({kernels::lstm_reserve_elems(s, DType::f32, gpu)}, DType::f32);
  Tensor ws = on_gpu({kernels::lstm_workspace_elems(s, DType::f32, gpu)}, DType::f32);
  Tensor x = on_gpu({s.T, s.N, s.I}, DType::f32), y = on_gpu({s.T, s.N, s.H}, DType::f32);
  const kernels::LstmWeights w = layer(DType::f32), wi = layer(DType::i32);
  REQUIRE_NOTHROW(kernels::lstm_forward(y, {}, reserve, x, {}, w, s, ws, stream));
  using Catch::Contains;
  REQUIRE_THROWS_AS(kernels::lstm_forward(on_gpu(y.shape(), DType::i32), {}, reserve, on_gpu(x.shape(), DType::i32),
                                          {}, wi, s, ws, stream),
                    UserError);
  REQUIRE_THROWS_WITH(kernels::lstm_forward(on_gpu(y.shape(), DType::i32), {}, reserve,
                                            on_gpu(x.shape(), DType::i32), {}, wi, s, ws, stream),
                      Contains("lstm on CUDA takes f32, bf16 or f16"));
  REQUIRE_THROWS_WITH(kernels::lstm_forward(y, {}, reserve, on_gpu(x.shape(), DType::f16), {}, w, s, ws, stream),
                      Contains("x must be f32 as y, got f16"));
  REQUIRE_THROWS_WITH(kernels::lstm_forward(y, {}, on_gpu({reserve.numel() - 1}, DType::f32), x, {}, w, s, ws, stream),
                      Contains("reserve holds"));
  if (ws.numel() > 1)
    REQUIRE_THROWS_WITH(kernels::lstm_forward(y, {}, reserve, x, {}, w, s, on_gpu({ws.numel() - 1}, DType::f32),
                                              stream),
                        Contains("workspace holds"));
  Tensor big = on_gpu({y.numel() + ws.numel()}, DType::f32);  // y's last element is the workspace's first
  REQUIRE_THROWS_WITH(kernels::lstm_forward(big.view(0, y.shape()), {}, reserve, x, {}, w, s,
                                            big.view(y.numel() - 1, {ws.numel()}), stream),
                      Contains("y overlaps the workspace"));
  stream.synchronize();
}

TEST_CASE("lstm_swap_leading on cuda moves the same bits as on the cpu", "[gpu][lstm]") {
  Device gpu = Device::cuda(0);
  Stream stream = Stream::create(gpu);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (Shape shape : {Shape{1, 1, 1}, Shape{3, 7, 5}, Shape{33, 2, 130}}) {
      uint64_t seed = fresh_seed();
      INFO("dtype=" << dtype_name(dtype) << " shape=" << shape_str(shape) << " seed=" << seed);
      Vec v = rounded(random_vector(shape_numel(shape), seed), dtype);
      const Shape swapped = {shape[1], shape[0], shape[2]};
      Tensor want = Tensor::empty(swapped, DType::f32, Device::cpu());
      kernels::lstm_swap_leading(want, Tensor::from_vector(v, shape), Stream());
      Tensor in = make_tensor(v, shape, dtype, gpu), got = make_tensor(poison(shape_numel(shape)), swapped, dtype, gpu);
      kernels::lstm_swap_leading(got, in, stream);
      stream.synchronize();
      REQUIRE(same_bits(got.to_vector(), want.to_vector()));
    }
  }
}

// The LSTM module (runtime/lstm_layer.h, two layers, batch first) on CUDA
// gives the CPU module's output, input gradient and parameter gradients,
// from the same weights.
TEST_CASE("the LSTM module on cuda matches the module on the cpu", "[gpu][lstm][modules]") {
  Device gpu = Device::cuda(0);
  const Shape x_shape = {3, 6, 5};  // (B, T, I)
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  Vec x = random_vector(shape_numel(x_shape), seed + 1);
  struct Result {
    Vec out, dx;
    std::vector<Vec> grads;
  };
  auto run_module = [&](Device device) {
    ParameterSet params;
    Lstm m(params, "lstm", 5, 7, 2);
    params.allocate(device, DType::f32, seed);
    Context ctx;
    ctx.device = device;
    ctx.stream = Stream::create(device);
    Tensor input = make_tensor(x, x_shape, DType::f32, device);
    Tensor out = m.forward(input, ctx);
    Tensor grad = make_tensor(random_vector(out.numel(), seed + 2), out.shape(), DType::f32, device);
    Tensor dx = m.backward(grad, ctx);
    ctx.stream.synchronize();
    Result r{out.to_vector(), dx.to_vector(), {}};
    for (const Parameter& p : params.list()) r.grads.push_back(p.grad.to_vector());
    return r;
  };
  Result cpu = run_module(Device::cpu()), cuda = run_module(gpu);
  const Tolerance tol = tolerance(DType::f32);
  require_close(cuda.out, cpu.out, tol.forward, "out");
  require_close(cuda.dx, cpu.dx, tol.backward, "dx");
  REQUIRE(cuda.grads.size() == cpu.grads.size());
  for (size_t i = 0; i < cpu.grads.size(); i++) require_close(cuda.grads[i], cpu.grads[i], tol.backward, "grad");
}
