// CPU lstm (forward, backward) against a float64 LSTM written out step by
// step with its hand-written backpropagation through time, on odd sizes
// (T = 1, N = 1, I = 1), with and without h0/c0 and dhT/dcT; a hand-computed
// step that pins nn.LSTM's gate order; accumulation semantics; float64
// finite differences of every gradient, of the kernels and of the reference
// itself; shape and argument checks.
#include <cmath>
#include <string>

#include "kernels/lstm.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
using tandem::kernels::LstmShape;

namespace {

using Vec = std::vector<float>;
using Dbl = std::vector<double>;

// The layer's inputs; h0 or c0 empty: undefined (zeros).
template <typename F>
struct Params {
  std::vector<F> x;           // (T, N, I)
  std::vector<F> h0, c0;      // (N, H) or empty
  std::vector<F> w_ih, w_hh;  // (4H, I), (4H, H)
  std::vector<F> b_ih, b_hh;  // (4H)
};

Params<double> widen(const Params<float>& p) {
  auto w = [](const Vec& v) { return Dbl(v.begin(), v.end()); };
  return {w(p.x), w(p.h0), w(p.c0), w(p.w_ih), w(p.w_hh), w(p.b_ih), w(p.b_hh)};
}

// The gradients flowing in: dy (T, N, H); dhT, dcT (N, H) or empty (zeros).
struct Upstream {
  Vec dy, dhT, dcT;
};

// Which of two optional tensors are given, for the loops below.
enum class Given { neither, both, first_only, second_only };
constexpr Given kGiven[] = {Given::neither, Given::both, Given::first_only, Given::second_only};
const char* given_name(Given g) {
  return g == Given::neither ? "neither" : g == Given::both ? "both" : g == Given::first_only ? "first" : "second";
}
bool first_given(Given g) { return g == Given::both || g == Given::first_only; }
bool second_given(Given g) { return g == Given::both || g == Given::second_only; }

Params<float> random_params(const LstmShape& s, uint64_t seed, Given state) {
  const int64_t G = 4 * s.H;
  Params<float> p;
  p.x = random_vector(s.T * s.N * s.I, seed);
  if (first_given(state)) p.h0 = random_vector(s.N * s.H, seed + 1);
  if (second_given(state)) p.c0 = random_vector(s.N * s.H, seed + 2, -2.f, 2.f);  // a cell state may exceed 1
  p.w_ih = random_vector(G * s.I, seed + 3), p.w_hh = random_vector(G * s.H, seed + 4);
  p.b_ih = random_vector(G, seed + 5), p.b_hh = random_vector(G, seed + 6);
  return p;
}

Upstream random_upstream(const LstmShape& s, uint64_t seed, Given given) {
  Upstream u;
  u.dy = random_vector(s.T * s.N * s.H, seed);
  if (first_given(given)) u.dhT = random_vector(s.N * s.H, seed + 1);
  if (second_given(given)) u.dcT = random_vector(s.N * s.H, seed + 2);
  return u;
}

double sigmoid(double v) { return 1 / (1 + std::exp(-v)); }

// v[i], or 0 for an empty (undefined) v.
double at(const Dbl& v, int64_t i) { return v.empty() ? 0 : v[i]; }
double at(const Vec& v, int64_t i) { return v.empty() ? 0 : v[i]; }

// The layer, as nn.LSTM's documentation writes it, in float64, and its
// gradients by backpropagation through time (weight gradients from zero).
struct Reference {
  Dbl y, hT, cT;
  Dbl dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh;
};

Reference reference(const Params<double>& p, const Upstream& u, const LstmShape& s) {
  const int64_t T = s.T, N = s.N, I = s.I, H = s.H, G = 4 * H, NH = N * H;
  Reference r;
  // h and c before every step and after the last: (T + 1, N, H); the gate
  // activations of every step (T, N, 4H), i f g o.
  Dbl h((T + 1) * NH), c((T + 1) * NH), act(T * N * G);
  for (int64_t k = 0; k < NH; k++) h[k] = at(p.h0, k), c[k] = at(p.c0, k);
  for (int64_t t = 0; t < T; t++)
    for (int64_t n = 0; n < N; n++) {
      double* a = &act[(t * N + n) * G];
      for (int64_t q = 0; q < G; q++) {
        double pre = p.b_ih[q] + p.b_hh[q];
        for (int64_t k = 0; k < I; k++) pre += p.x[(t * N + n) * I + k] * p.w_ih[q * I + k];
        for (int64_t k = 0; k < H; k++) pre += h[t * NH + n * H + k] * p.w_hh[q * H + k];
        a[q] = q / H == 2 ? std::tanh(pre) : sigmoid(pre);  // g is the third block
      }
      for (int64_t j = 0; j < H; j++) {
        const int64_t now = t * NH + n * H + j, next = now + NH;
        c[next] = a[H + j] * c[now] + a[j] * a[2 * H + j];
        h[next] = a[3 * H + j] * std::tanh(c[next]);
      }
    }
  r.y.assign(h.begin() + NH, h.end());
  r.hT.assign(h.end() - NH, h.end()), r.cT.assign(c.end() - NH, c.end());

  r.dx.assign(T * N * I, 0), r.dw_ih.assign(G * I, 0), r.dw_hh.assign(G * H, 0), r.db_ih.assign(G, 0);
  Dbl dh(NH), dc(NH), dpre(G);
  for (int64_t k = 0; k < NH; k++) dh[k] = at(u.dhT, k), dc[k] = at(u.dcT, k);
  for (int64_t t = T - 1; t >= 0; t--) {
    Dbl dh_prev(NH, 0);
    for (int64_t n = 0; n < N; n++) {
      const double* a = &act[(t * N + n) * G];
      for (int64_t j = 0; j < H; j++) {
        const int64_t k = n * H + j;
        const double i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
        const double tc = std::tanh(c[(t + 1) * NH + k]);
        const double dh_t = dh[k] + u.dy[t * NH + k];
        const double dc_t = dc[k] + dh_t * o * (1 - tc * tc);
        dpre[j] = dc_t * g * i * (1 - i);
        dpre[H + j] = dc_t * c[t * NH + k] * f * (1 - f);
        dpre[2 * H + j] = dc_t * i * (1 - g * g);
        dpre[3 * H + j] = dh_t * tc * o * (1 - o);
        dc[k] = dc_t * f;
      }
      for (int64_t q = 0; q < G; q++) {
        r.db_ih[q] += dpre[q];
        for (int64_t k = 0; k < I; k++) {
          r.dw_ih[q * I + k] += dpre[q] * p.x[(t * N + n) * I + k];
          r.dx[(t * N + n) * I + k] += dpre[q] * p.w_ih[q * I + k];
        }
        for (int64_t k = 0; k < H; k++) {
          r.dw_hh[q * H + k] += dpre[q] * h[t * NH + n * H + k];
          dh_prev[n * H + k] += dpre[q] * p.w_hh[q * H + k];
        }
      }
    }
    dh = dh_prev;
  }
  r.dh0 = dh, r.dc0 = dc, r.db_hh = r.db_ih;
  return r;
}

Shape seq_shape(const LstmShape& s, int64_t features) { return {s.T, s.N, features}; }
Shape state_shape(const LstmShape& s) { return {s.N, s.H}; }

// A tensor of v, or undefined when v is empty.
Tensor optional_tensor(const Vec& v, Shape shape) { return v.empty() ? Tensor() : Tensor::from_vector(v, shape); }

Tensor nan_tensor(Shape shape) { return Tensor::from_vector(Vec(shape_numel(shape), NAN), shape); }

// NaN: the kernels must write every entry they read.
Tensor workspace_for(const LstmShape& s) { return nan_tensor({kernels::lstm_workspace_elems(s)}); }

kernels::LstmWeights weights_of(const Params<float>& p, const LstmShape& s) {
  return {Tensor::from_vector(p.w_ih, {4 * s.H, s.I}), Tensor::from_vector(p.w_hh, {4 * s.H, s.H}),
          Tensor::from_vector(p.b_ih, {4 * s.H}), Tensor::from_vector(p.b_hh, {4 * s.H})};
}

// What one forward call leaves: y, hT, cT and the reserve, each started as NaN.
struct Forward {
  Tensor y, hT, cT, reserve;
};

Forward forward(const Params<float>& p, const LstmShape& s) {
  Forward f{nan_tensor(seq_shape(s, s.H)), nan_tensor(state_shape(s)), nan_tensor(state_shape(s)),
            nan_tensor({kernels::lstm_reserve_elems(s)})};
  kernels::lstm_forward(f.y, {f.hT, f.cT}, f.reserve, Tensor::from_vector(p.x, seq_shape(s, s.I)),
                        {optional_tensor(p.h0, state_shape(s)), optional_tensor(p.c0, state_shape(s))},
                        weights_of(p, s), s, workspace_for(s), Stream());
  return f;
}

// sum(v * R) in float64.
double dot(const Vec& v, const Vec& R) {
  double sum = 0;
  for (size_t i = 0; i < v.size(); i++) sum += static_cast<double>(v[i]) * R[i];
  return sum;
}

// fp32 against float64, as unit_scaled_error (relative to the O(1) scale of
// the values: a 1-element result may land near zero). The forward rounds
// once per multiply-add and per nonlinearity, and its steps are contractive
// (sigmoid, tanh); backward adds sums over T*N rows. Seen over 200 runs:
// below 1.2e-6 forward, 4.6e-6 backward (the 13-step case).
constexpr double kTolForward = 1e-5;
constexpr double kTolBackward = 5e-5;

// Odd on purpose: one step; several; one sequence; one input feature; a
// larger one whose GEMMs are not tiny.
const std::vector<LstmShape> kShapes = {
    {.T = 1, .N = 2, .I = 3, .H = 4}, {.T = 7, .N = 3, .I = 5, .H = 4}, {.T = 6, .N = 1, .I = 3, .H = 5},
    {.T = 5, .N = 2, .I = 1, .H = 3}, {.T = 1, .N = 1, .I = 1, .H = 1}, {.T = 13, .N = 4, .I = 17, .H = 24},
};

}  // namespace

TEST_CASE("lstm shape check, sizes and messages", "[kernels][lstm]") {
  const LstmShape s{.T = 7, .N = 3, .I = 5, .H = 4};
  REQUIRE(s.str() == "T=7 N=3 I=5 H=4");
  REQUIRE_NOTHROW(kernels::check_lstm_shape(s));
  // Gates (T, N, 4H), tanh(c) (T, N, H) and c_0 .. c_T (T + 1, N, H).
  REQUIRE(kernels::lstm_reserve_elems(s) == 7 * 3 * 16 + 7 * 3 * 4 + 8 * 3 * 4);
  // Gate gradients (T, N, 4H), dh and dc (N, H).
  REQUIRE(kernels::lstm_workspace_elems(s) == 7 * 3 * 16 + 2 * 3 * 4);
  REQUIRE(kernels::lstm_flops(s) == 2.0 * 7 * 3 * 16 * (5 + 4));

  using Catch::Contains;
  for (int field = 0; field < 4; field++)
    for (int64_t bad : {0, -1}) {
      LstmShape b = s;
      (field == 0 ? b.T : field == 1 ? b.N : field == 2 ? b.I : b.H) = bad;
      INFO(b.str());
      REQUIRE_THROWS_AS(kernels::check_lstm_shape(b), UserError);
      REQUIRE_THROWS_WITH(kernels::check_lstm_shape(b), Contains("must all be positive") && Contains(b.str()));
    }
  REQUIRE_THROWS_AS(kernels::check_lstm_shape(LstmShape{}), UserError);  // all zero
  // A bad shape fails before any tensor is looked at.
  REQUIRE_THROWS_AS(kernels::lstm_forward(Tensor(), {}, Tensor(), Tensor(), {}, {}, LstmShape{}, Tensor(), Stream()),
                    UserError);
  REQUIRE_THROWS_AS(kernels::lstm_backward(Tensor(), {}, {}, Tensor(), {}, Tensor(), {}, {}, Tensor(), Tensor(),
                                           LstmShape{}, Tensor(), Stream()),
                    UserError);
}

TEST_CASE("cpu lstm follows nn.LSTM: gates i, f, g, o and two biases", "[kernels][lstm]") {
  // One feature in and out, two steps, worked out by hand from the equations
  // in kernels/lstm.h, independently of the reference below.
  const LstmShape s{.T = 2, .N = 1, .I = 1, .H = 1};
  Params<float> p;
  p.x = {0.5f, -1.f}, p.h0 = {0.25f}, p.c0 = {-0.75f};
  p.w_ih = {0.1f, 0.2f, 0.3f, 0.4f}, p.w_hh = {-0.5f, 0.6f, -0.7f, 0.8f};  // rows i, f, g, o
  p.b_ih = {0.01f, 0.02f, 0.03f, 0.04f}, p.b_hh = {-0.1f, 0.3f, 0.05f, -0.2f};
  auto pre = [&](int q, double x, double h) {
    return double{p.w_ih[q]} * x + double{p.b_ih[q]} + double{p.w_hh[q]} * h + double{p.b_hh[q]};
  };
  double h = 0.25, c = -0.75, y[2];
  for (int t = 0; t < 2; t++) {
    const double i = sigmoid(pre(0, p.x[t], h)), f = sigmoid(pre(1, p.x[t], h)), g = std::tanh(pre(2, p.x[t], h)),
                 o = sigmoid(pre(3, p.x[t], h));
    c = f * c + i * g;
    h = o * std::tanh(c);
    y[t] = h;
  }
  Forward got = forward(p, s);
  REQUIRE(max_abs_diff(got.y.to_vector(), Dbl{y[0], y[1]}) <= 1e-6);
  REQUIRE(max_abs_diff(got.hT.to_vector(), Dbl{h}) <= 1e-6);
  REQUIRE(max_abs_diff(got.cT.to_vector(), Dbl{c}) <= 1e-6);
}

TEST_CASE("cpu lstm matches a float64 reference, forward and backward", "[kernels][lstm]") {
  for (const LstmShape& s : kShapes)
    for (Given state : kGiven)
      for (Given upstream : kGiven) {
        uint64_t seed = fresh_seed();
        INFO(s.str() << " h0/c0 given: " << given_name(state) << ", dhT/dcT given: " << given_name(upstream)
                     << " seed=" << seed);
        const int64_t G = 4 * s.H;
        Params<float> p = random_params(s, seed, state);
        Upstream u = random_upstream(s, seed + 10, upstream);
        Vec dw_ih0 = random_vector(G * s.I, seed + 20), dw_hh0 = random_vector(G * s.H, seed + 21),
            db_ih0 = random_vector(G, seed + 22), db_hh0 = random_vector(G, seed + 23);
        Reference ref = reference(widen(p), u, s);

        // Outputs start as NaN (forward): they must be overwritten.
        Forward f = forward(p, s);
        REQUIRE(all_finite(f.y.to_vector()));
        REQUIRE(unit_scaled_error(f.y.to_vector(), ref.y) <= kTolForward);
        REQUIRE(unit_scaled_error(f.hT.to_vector(), ref.hT) <= kTolForward);
        REQUIRE(unit_scaled_error(f.cT.to_vector(), ref.cT) <= kTolForward);

        // dx, dh0, dc0 start as NaN: overwritten. The weight gradients start
        // non-zero: added to.
        Tensor dx = nan_tensor(seq_shape(s, s.I)), dh0 = nan_tensor(state_shape(s)),
               dc0 = nan_tensor(state_shape(s));
        kernels::LstmGrads grads{Tensor::from_vector(dw_ih0, {G, s.I}), Tensor::from_vector(dw_hh0, {G, s.H}),
                                 Tensor::from_vector(db_ih0, {G}), Tensor::from_vector(db_hh0, {G})};
        kernels::lstm_backward(dx, {dh0, dc0}, grads, Tensor::from_vector(u.dy, seq_shape(s, s.H)),
                               {optional_tensor(u.dhT, state_shape(s)), optional_tensor(u.dcT, state_shape(s))},
                               Tensor::from_vector(p.x, seq_shape(s, s.I)), {optional_tensor(p.h0, state_shape(s)), {}},
                               weights_of(p, s), f.y, f.reserve, s, workspace_for(s), Stream());
        REQUIRE(all_finite(dx.to_vector()));
        REQUIRE(unit_scaled_error(dx.to_vector(), ref.dx) <= kTolBackward);
        REQUIRE(unit_scaled_error(dh0.to_vector(), ref.dh0) <= kTolBackward);
        REQUIRE(unit_scaled_error(dc0.to_vector(), ref.dc0) <= kTolBackward);
        auto plus = [](const Vec& start, const Dbl& grad) {
          Dbl sum(grad.size());
          for (size_t i = 0; i < grad.size(); i++) sum[i] = start[i] + grad[i];
          return sum;
        };
        REQUIRE(unit_scaled_error(grads.dw_ih.to_vector(), plus(dw_ih0, ref.dw_ih)) <= kTolBackward);
        REQUIRE(unit_scaled_error(grads.dw_hh.to_vector(), plus(dw_hh0, ref.dw_hh)) <= kTolBackward);
        REQUIRE(unit_scaled_error(grads.db_ih.to_vector(), plus(db_ih0, ref.db_ih)) <= kTolBackward);
        REQUIRE(unit_scaled_error(grads.db_hh.to_vector(), plus(db_hh0, ref.db_hh)) <= kTolBackward);
      }
}

TEST_CASE("cpu lstm gradients add up, activation gradients are overwritten, undefined outputs are skipped",
          "[kernels][lstm]") {
  const LstmShape s = kShapes[1];
  uint64_t seed = fresh_seed();
  INFO(s.str() << " seed=" << seed);
  const int64_t G = 4 * s.H;
  Params<float> p = random_params(s, seed, Given::both);
  Upstream u = random_upstream(s, seed + 10, Given::both);
  Reference ref = reference(widen(p), u, s);

  // Forward without hT and cT: y and the reserve are all backward needs.
  Tensor y = nan_tensor(seq_shape(s, s.H)), reserve = nan_tensor({kernels::lstm_reserve_elems(s)});
  Tensor x = Tensor::from_vector(p.x, seq_shape(s, s.I)), h0 = Tensor::from_vector(p.h0, state_shape(s)),
         c0 = Tensor::from_vector(p.c0, state_shape(s));
  const kernels::LstmWeights w = weights_of(p, s);
  Tensor workspace = workspace_for(s);
  kernels::lstm_forward(y, {}, reserve, x, {h0, c0}, w, s, workspace, Stream());
  REQUIRE(unit_scaled_error(y.to_vector(), ref.y) <= kTolForward);

  // Two micro-batches of the same data: each weight gradient = 2 * gradient,
  // dx = the gradient once. The second call also skips dh0 and dc0, and
  // backward reads neither c0 nor the biases (undefined here).
  Tensor dx = nan_tensor(seq_shape(s, s.I)), dh0 = nan_tensor(state_shape(s));
  auto zeros = [](Shape shape) { return Tensor::zeros(std::move(shape), DType::f32, Device::cpu()); };
  kernels::LstmGrads grads{zeros({G, s.I}), zeros({G, s.H}), zeros({G}), zeros({G})};
  Tensor dy = Tensor::from_vector(u.dy, seq_shape(s, s.H));
  kernels::LstmState dfinal{Tensor::from_vector(u.dhT, state_shape(s)), Tensor::from_vector(u.dcT, state_shape(s))};
  kernels::lstm_backward(dx, {dh0, {}}, grads, dy, dfinal, x, {h0, c0}, w, y, reserve, s, workspace, Stream());
  REQUIRE(unit_scaled_error(dh0.to_vector(), ref.dh0) <= kTolBackward);
  kernels::lstm_backward(dx, {}, grads, dy, dfinal, x, {h0, {}}, {w.w_ih, w.w_hh, {}, {}}, y, reserve, s, workspace,
                         Stream());
  REQUIRE(unit_scaled_error(dx.to_vector(), ref.dx) <= kTolBackward);
  auto twice = [](Dbl v) {
    for (double& e : v) e *= 2;
    return v;
  };
  REQUIRE(unit_scaled_error(grads.dw_ih.to_vector(), twice(ref.dw_ih)) <= kTolBackward);
  REQUIRE(unit_scaled_error(grads.dw_hh.to_vector(), twice(ref.dw_hh)) <= kTolBackward);
  REQUIRE(unit_scaled_error(grads.db_ih.to_vector(), twice(ref.db_ih)) <= kTolBackward);
  REQUIRE(unit_scaled_error(grads.db_hh.to_vector(), twice(ref.db_hh)) <= kTolBackward);
}

TEST_CASE("float64 reference lstm backward matches its own finite differences", "[kernels][lstm]") {
  // The oracle checked on its own, so that a mistake shared by it and the
  // kernels cannot hide: central differences of the float64 forward.
  const LstmShape s{.T = 4, .N = 2, .I = 3, .H = 2};
  uint64_t seed = fresh_seed();
  INFO(s.str() << " seed=" << seed);
  Params<double> p = widen(random_params(s, seed, Given::both));
  Upstream u = random_upstream(s, seed + 10, Given::both);
  Reference ref = reference(p, u, s);
  // loss = sum(y * dy) + sum(hT * dhT) + sum(cT * dcT), all in float64.
  auto loss = [&] {
    Reference r = reference(p, u, s);
    double sum = 0;
    for (size_t i = 0; i < r.y.size(); i++) sum += r.y[i] * u.dy[i];
    for (size_t i = 0; i < r.hT.size(); i++) sum += r.hT[i] * u.dhT[i] + r.cT[i] * u.dcT[i];
    return sum;
  };
  auto numeric = [&](Dbl& v) {
    constexpr double kEps = 1e-6;
    Dbl grad(v.size());
    for (size_t i = 0; i < v.size(); i++) {
      const double keep = v[i];
      v[i] = keep + kEps;
      const double up = loss();
      v[i] = keep - kEps;
      const double down = loss();
      v[i] = keep;
      grad[i] = (up - down) / (2 * kEps);
    }
    return grad;
  };
  constexpr double kTol = 1e-7;  // seen: below 1.2e-8
  REQUIRE(rel_error(ref.dx, numeric(p.x)) <= kTol);
  REQUIRE(rel_error(ref.dh0, numeric(p.h0)) <= kTol);
  REQUIRE(rel_error(ref.dc0, numeric(p.c0)) <= kTol);
  REQUIRE(rel_error(ref.dw_ih, numeric(p.w_ih)) <= kTol);
  REQUIRE(rel_error(ref.dw_hh, numeric(p.w_hh)) <= kTol);
  REQUIRE(rel_error(ref.db_ih, numeric(p.b_ih)) <= kTol);
  REQUIRE(rel_error(ref.db_hh, numeric(p.b_hh)) <= kTol);
}

TEST_CASE("cpu lstm backward matches float64 finite differences", "[kernels][lstm]") {
  // Small: every value of x, h0, c0 and the weights is stepped in turn.
  for (const LstmShape& s : {LstmShape{.T = 3, .N = 2, .I = 3, .H = 2}, LstmShape{.T = 1, .N = 1, .I = 1, .H = 1},
                             LstmShape{.T = 5, .N = 1, .I = 2, .H = 3}}) {
    uint64_t seed = fresh_seed();
    INFO(s.str() << " seed=" << seed);
    const int64_t G = 4 * s.H;
    Params<float> p = random_params(s, seed, Given::both);
    // loss = sum(y * Ry) + sum(hT * Rh) + sum(cT * Rc): dy = Ry, dhT = Rh, dcT = Rc.
    Upstream R = random_upstream(s, seed + 10, Given::both);
    Forward f = forward(p, s);
    Tensor dx = nan_tensor(seq_shape(s, s.I)), dh0 = nan_tensor(state_shape(s)), dc0 = nan_tensor(state_shape(s));
    auto zeros = [](Shape shape) { return Tensor::zeros(std::move(shape), DType::f32, Device::cpu()); };
    kernels::LstmGrads grads{zeros({G, s.I}), zeros({G, s.H}), zeros({G}), zeros({G})};
    kernels::lstm_backward(dx, {dh0, dc0}, grads, Tensor::from_vector(R.dy, seq_shape(s, s.H)),
                           {Tensor::from_vector(R.dhT, state_shape(s)), Tensor::from_vector(R.dcT, state_shape(s))},
                           Tensor::from_vector(p.x, seq_shape(s, s.I)), {Tensor::from_vector(p.h0, state_shape(s)), {}},
                           weights_of(p, s), f.y, f.reserve, s, workspace_for(s), Stream());

    // Central differences in float64 over the fp32 forward kernel.
    auto loss = [&] {
      Forward g = forward(p, s);
      return dot(g.y.to_vector(), R.dy) + dot(g.hT.to_vector(), R.dhT) + dot(g.cT.to_vector(), R.dcT);
    };
    // The loss is smooth but not linear: a central difference is off by
    // O(eps^2) (up to 3e-4 at eps = 1e-2, the bias gradients summing T*N
    // rows), and a smaller eps drowns in the fp32 forward's rounding. Two
    // steps, eps and eps / 2, combine to cancel the eps^2 term (Richardson).
    auto numeric = [&](Vec& param) {
      constexpr float kEps = 1e-2f;
      std::vector<double> coarse = numerical_gradient(param, loss, kEps),
                          fine = numerical_gradient(param, loss, kEps / 2);
      for (size_t i = 0; i < fine.size(); i++) fine[i] = (4 * fine[i] - coarse[i]) / 3;
      return fine;
    };
    constexpr double kTol = 1e-3;  // as unit_scaled_error; seen: below 1.1e-4
    REQUIRE(unit_scaled_error(dx.to_vector(), numeric(p.x)) <= kTol);
    REQUIRE(unit_scaled_error(dh0.to_vector(), numeric(p.h0)) <= kTol);
    REQUIRE(unit_scaled_error(dc0.to_vector(), numeric(p.c0)) <= kTol);
    REQUIRE(unit_scaled_error(grads.dw_ih.to_vector(), numeric(p.w_ih)) <= kTol);
    REQUIRE(unit_scaled_error(grads.dw_hh.to_vector(), numeric(p.w_hh)) <= kTol);
    REQUIRE(unit_scaled_error(grads.db_ih.to_vector(), numeric(p.b_ih)) <= kTol);
    REQUIRE(unit_scaled_error(grads.db_hh.to_vector(), numeric(p.b_hh)) <= kTol);
  }
}

TEST_CASE("cpu lstm rejects tensors that do not match the shape", "[kernels][lstm]") {
  const LstmShape s{.T = 7, .N = 3, .I = 5, .H = 4};
  const int64_t G = 4 * s.H;
  auto zeros = [](Shape shape) { return Tensor::zeros(std::move(shape), DType::f32, Device::cpu()); };
  Tensor x = zeros({s.T, s.N, s.I}), y = zeros({s.T, s.N, s.H}), hT = zeros({s.N, s.H}), cT = zeros({s.N, s.H});
  Tensor h0 = zeros({s.N, s.H}), c0 = zeros({s.N, s.H}), reserve = zeros({kernels::lstm_reserve_elems(s)});
  Tensor ws = zeros({kernels::lstm_workspace_elems(s)});
  const kernels::LstmWeights w{zeros({G, s.I}), zeros({G, s.H}), zeros({G}), zeros({G})};
  auto fwd = [&](const Tensor& out, const kernels::LstmState& last, const Tensor& res, const Tensor& in,
                 const kernels::LstmState& first, const kernels::LstmWeights& weights, const Tensor& work) {
    kernels::lstm_forward(out, last, res, in, first, weights, s, work, Stream());
  };
  using Catch::Contains;
  REQUIRE_NOTHROW(fwd(y, {hT, cT}, reserve, x, {h0, c0}, w, ws));
  REQUIRE_NOTHROW(fwd(y, {}, reserve, x, {}, w, ws));                                            // all optional
  REQUIRE_NOTHROW(fwd(y, {hT, cT}, reserve, x, {h0, c0}, w, zeros({ws.numel() + 5})));  // more is fine
  REQUIRE_THROWS_WITH(fwd(zeros({s.N, s.T, s.H}), {}, reserve, x, {}, w, ws), Contains("y must be [7, 3, 4]"));
  REQUIRE_THROWS_WITH(fwd(y, {}, reserve, zeros({s.T, s.N, s.H}), {}, w, ws), Contains("x must be [7, 3, 5]"));
  REQUIRE_THROWS_WITH(fwd(y, {zeros({s.H, s.N}), {}}, reserve, x, {}, w, ws), Contains("hT must be [3, 4]"));
  REQUIRE_THROWS_WITH(fwd(y, {}, reserve, x, {{}, zeros({s.N * s.H})}, w, ws), Contains("c0 must be [3, 4]"));
  REQUIRE_THROWS_WITH(fwd(y, {}, zeros({reserve.numel() - 1}), x, {}, w, ws), Contains("reserve holds"));
  REQUIRE_THROWS_WITH(fwd(y, {}, reserve, x, {}, {zeros({s.I, G}), w.w_hh, w.b_ih, w.b_hh}, ws),
                      Contains("w_ih must be [16, 5]"));  // transposed
  REQUIRE_THROWS_WITH(fwd(y, {}, reserve, x, {}, {w.w_ih, w.w_hh, zeros({s.H}), w.b_hh}, ws),
                      Contains("b_ih must be [16]"));
  REQUIRE_THROWS_WITH(fwd(y, {}, reserve, x, {}, {w.w_ih, w.w_hh, w.b_ih, Tensor()}, ws),
                      Contains("b_hh is undefined"));
  REQUIRE_THROWS_WITH(fwd(y, {}, reserve, Tensor(), {}, w, ws), Contains("x is undefined"));
  REQUIRE_THROWS_WITH(fwd(y, {}, reserve, x, {}, w, zeros({ws.numel() - 1})), Contains("workspace holds"));
  REQUIRE_THROWS_WITH(fwd(y, {}, reserve, x, {}, w, Tensor()), Contains("workspace is undefined"));
  REQUIRE_THROWS_WITH(fwd(y, {}, reserve, Tensor::zeros(x.shape(), DType::bf16, Device::cpu()), {}, w, ws),
                      Contains("x must be f32"));
  REQUIRE_THROWS_WITH(fwd(y, {}, reserve, x, {}, w, Tensor::zeros({ws.numel()}, DType::i32, Device::cpu())),
                      Contains("workspace must be f32"));
  // A shape that disagrees with the tensors: every one is checked against s.
  LstmShape longer = s;
  longer.T = 8;
  REQUIRE_THROWS_WITH(kernels::lstm_forward(y, {}, reserve, x, {}, w, longer, ws, Stream()),
                      Contains("y must be [8, 3, 4] for T=8 N=3 I=5 H=4"));
  // Overlaps: an output over an input, another output or the workspace.
  Tensor big = zeros({y.numel() + ws.numel()});
  REQUIRE_THROWS_WITH(fwd(big.view(0, y.shape()), {}, reserve, x, {}, w, big.view(y.numel() - 1, {ws.numel()})),
                      Contains("y overlaps the workspace"));
  REQUIRE_NOTHROW(fwd(big.view(0, y.shape()), {}, reserve, x, {}, w, big.view(y.numel(), {ws.numel()})));
  REQUIRE_THROWS_WITH(fwd(y, {y.view((s.T - 1) * s.N * s.H, {s.N, s.H}), {}}, reserve, x, {}, w, ws),
                      Contains("y overlaps hT"));  // hT may not alias y's last step
  REQUIRE_THROWS_WITH(fwd(y, {}, reserve, x, {reserve.view(0, {s.N, s.H}), {}}, w, ws),
                      Contains("h0 overlaps the reserve"));

  Tensor dx = zeros(x.shape()), dh0 = zeros({s.N, s.H}), dc0 = zeros({s.N, s.H});
  const kernels::LstmGrads g{zeros({G, s.I}), zeros({G, s.H}), zeros({G}), zeros({G})};
  auto bwd = [&](const Tensor& din, const kernels::LstmState& dfirst, const kernels::LstmGrads& grads,
                 const Tensor& dout, const kernels::LstmState& dlast, const Tensor& work) {
    kernels::lstm_backward(din, dfirst, grads, dout, dlast, x, {h0, c0}, w, y, reserve, s, work, Stream());
  };
  REQUIRE_NOTHROW(bwd(dx, {dh0, dc0}, g, zeros(y.shape()), {hT, cT}, ws));
  REQUIRE_NOTHROW(bwd(dx, {}, g, zeros(y.shape()), {}, ws));
  REQUIRE_THROWS_WITH(bwd(Tensor(), {}, g, zeros(y.shape()), {}, ws), Contains("dx is undefined"));
  REQUIRE_THROWS_WITH(bwd(dx, {}, g, zeros(x.shape()), {}, ws), Contains("dy must be [7, 3, 4]"));
  REQUIRE_THROWS_WITH(bwd(dx, {zeros({s.N, s.H + 1}), {}}, g, zeros(y.shape()), {}, ws), Contains("dh0 must be"));
  REQUIRE_THROWS_WITH(bwd(dx, {}, g, zeros(y.shape()), {{}, zeros({s.H, s.N})}, ws), Contains("dcT must be"));
  REQUIRE_THROWS_WITH(bwd(dx, {}, {g.dw_ih, zeros({G, s.I}), g.db_ih, g.db_hh}, zeros(y.shape()), {}, ws),
                      Contains("dw_hh must be [16, 4]"));
  REQUIRE_THROWS_WITH(bwd(dx, {}, {g.dw_ih, g.dw_hh, g.db_ih, Tensor()}, zeros(y.shape()), {}, ws),
                      Contains("db_hh is undefined"));
  REQUIRE_THROWS_WITH(bwd(dx, {}, g, zeros(y.shape()), {}, zeros({3})), Contains("workspace holds"));
  REQUIRE_THROWS_WITH(bwd(dx, {}, {g.dw_ih, g.dw_hh, g.db_ih, g.db_ih}, zeros(y.shape()), {}, ws),
                      Contains("db_ih overlaps db_hh"));  // one buffer for both: the sum would be doubled
  REQUIRE_THROWS_WITH(bwd(dx, {dh0, dh0}, g, zeros(y.shape()), {}, ws), Contains("dh0 overlaps dc0"));
  Tensor shared = zeros({y.numel() + dx.numel()});  // dy's last element is dx's first
  REQUIRE_THROWS_WITH(bwd(shared.view(y.numel() - 1, x.shape()), {}, g, shared.view(0, y.shape()), {}, ws),
                      Contains("dx overlaps dy"));
  REQUIRE_THROWS_WITH(kernels::lstm_backward(dx, {}, g, zeros(y.shape()), {}, x, {}, w, y,
                                             zeros({reserve.numel() - 1}), s, ws, Stream()),
                      Contains("reserve holds"));
}
