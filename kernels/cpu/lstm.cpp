// CPU reference for lstm: OpenBLAS sgemm (fp32) for every matrix product,
// plain loops for the gates. See kernels/lstm.h.
//
// Forward: the input's share of every step's gates is one GEMM over all
// T*N rows, x (TN, I) x w_ih^T (I, 4H), added onto b_ih + b_hh, straight
// into the reserve; then per step one GEMM adds h_{t-1} (N, H) x w_hh^T
// (H, 4H) and the gates are activated in place, so the reserve ends up
// holding the activations backward needs (no workspace needed).
//
// Backward walks the steps in reverse, carrying dh and dc (the gradients
// with respect to h_t and c_t from later steps), and stores every step's gate
// gradients dgates (N, 4H), taken with respect to the pre-activations. Only
// dh_{t-1} = dgates_t x w_hh has to be computed inside the loop; everything
// else is one large GEMM over all steps at the end:
//   dx     (TN, I)  = dgates (TN, 4H) x w_ih (4H, I)
//   dw_ih  (4H, I) += dgates^T x x (TN, I)
//   dw_hh  (4H, H) += dgates_{2..T}^T x y_{1..T-1} ((T-1)N, H), + dgates_1^T x h0
//   db_ih, db_hh   += the column sums of dgates

#include <algorithm>
#include <cmath>

#include "kernels/lstm.h"
#include "kernels/cpu/blas.h"

namespace tandem::kernels::cpu {

namespace {

// The reserve, lstm_reserve_elems(s) floats, in this order:
//   gates  (T, N, 4H)   i, f, g, o of each step after their nonlinearity
//   c      (T + 1, N, H) c_0 .. c_T
//   tanh_c (T, N, H)    tanh(c_1) .. tanh(c_T)
template <typename F>
struct Reserve {
  F* gates;
  F* c;
  F* tanh_c;
  Reserve(F* base, const LstmShape& s)
      : gates(base), c(gates + s.T * s.N * 4 * s.H), tanh_c(c + (s.T + 1) * s.N * s.H) {}
};

float sigmoid(float v) { return 1.f / (1.f + std::exp(-v)); }

}  // namespace

void lstm_forward(float* y, float* hT, float* cT, float* reserve, const float* x, const float* h0, const float* c0,
                  const float* w_ih, const float* w_hh, const float* b_ih, const float* b_hh, const LstmShape& s) {
  const int64_t N = s.N, H = s.H, G = 4 * s.H, NH = N * H, TN = s.T * N;
  Reserve<float> r(reserve, s);

  // Pre-activations of all steps: b_ih + b_hh, then += x @ w_ih^T (beta 1).
  for (int64_t row = 0; row < TN; row++)
    for (int64_t j = 0; j < G; j++) r.gates[row * G + j] = b_ih[j] + b_hh[j];
  sgemm(CblasNoTrans, CblasTrans, TN, G, s.I, x, s.I, w_ih, s.I, 1.f, r.gates, G);

  if (c0)
    std::copy(c0, c0 + NH, r.c);
  else
    std::fill(r.c, r.c + NH, 0.f);
  for (int64_t t = 0; t < s.T; t++) {  // step t + 1 in the header's numbering
    float* gates = r.gates + t * N * G;
    const float* h_prev = t == 0 ? h0 : y + (t - 1) * NH;  // null: h_0 = 0 adds nothing
    if (h_prev) sgemm(CblasNoTrans, CblasTrans, N, G, H, h_prev, H, w_hh, H, 1.f, gates, G);
    const float* c_prev = r.c + t * NH;
    float *c = r.c + (t + 1) * NH, *tanh_c = r.tanh_c + t * NH, *h = y + t * NH;
    for (int64_t n = 0; n < N; n++) {
      float* row = gates + n * G;  // i | f | g | o, H each
      for (int64_t j = 0; j < H; j++) {
        const float i = sigmoid(row[j]), f = sigmoid(row[H + j]), g = std::tanh(row[2 * H + j]),
                    o = sigmoid(row[3 * H + j]);
        row[j] = i, row[H + j] = f, row[2 * H + j] = g, row[3 * H + j] = o;
        const int64_t k = n * H + j;
        c[k] = f * c_prev[k] + i * g;
        tanh_c[k] = std::tanh(c[k]);
        h[k] = o * tanh_c[k];
      }
    }
  }
  if (hT) std::copy(y + (s.T - 1) * NH, y + s.T * NH, hT);
  if (cT) std::copy(r.c + s.T * NH, r.c + (s.T + 1) * NH, cT);
}

void lstm_backward(float* dx, float* dh0, float* dc0, float* dw_ih, float* dw_hh, float* db_ih, float* db_hh,
                   const float* dy, const float* dhT, const float* dcT, const float* x, const float* h0,
                   const float* w_ih, const float* w_hh, const float* y, const float* reserve, const LstmShape& s,
                   float* workspace) {
  const int64_t N = s.N, H = s.H, G = 4 * s.H, NH = N * H, TN = s.T * N;
  Reserve<const float> r(reserve, s);
  // The workspace: dgates (T, N, 4H), then dh and dc (N, H) each.
  float *dgates = workspace, *dh = dgates + TN * G, *dc = dh + NH;

  if (dhT)
    std::copy(dhT, dhT + NH, dh);
  else
    std::fill(dh, dh + NH, 0.f);
  if (dcT)
    std::copy(dcT, dcT + NH, dc);
  else
    std::fill(dc, dc + NH, 0.f);
  for (int64_t t = s.T - 1; t >= 0; t--) {
    const float *gates = r.gates + t * N * G, *c_prev = r.c + t * NH, *tanh_c = r.tanh_c + t * NH,
                *dy_t = dy + t * NH;
    float* dgate = dgates + t * N * G;
    for (int64_t n = 0; n < N; n++) {
      const float* row = gates + n * G;
      float* drow = dgate + n * G;
      for (int64_t j = 0; j < H; j++) {
        const int64_t k = n * H + j;
        const float i = row[j], f = row[H + j], g = row[2 * H + j], o = row[3 * H + j], th = tanh_c[k];
        const float dh_t = dh[k] + dy_t[k];                      // h_t feeds y_t and step t + 1
        const float dc_t = dc[k] + dh_t * o * (1.f - th * th);  // c_t feeds h_t and c_{t+1}
        // Through each nonlinearity: sigmoid' = s (1 - s), tanh' = 1 - tanh^2.
        drow[j] = dc_t * g * i * (1.f - i);
        drow[H + j] = dc_t * c_prev[k] * f * (1.f - f);
        drow[2 * H + j] = dc_t * i * (1.f - g * g);
        drow[3 * H + j] = dh_t * th * o * (1.f - o);
        dc[k] = dc_t * f;  // now dc_{t-1}
      }
    }
    // dh_{t-1} (N, H) = dgates_t (N, 4H) x w_hh (4H, H); at the first step
    // that is dh0 itself, skipped when nobody wants it.
    float* dh_prev = t > 0 ? dh : dh0;
    if (dh_prev) sgemm(CblasNoTrans, CblasNoTrans, N, H, G, dgate, G, w_hh, H, 0.f, dh_prev, H);
  }
  if (dc0) std::copy(dc, dc + NH, dc0);

  sgemm(CblasNoTrans, CblasNoTrans, TN, s.I, G, dgates, G, w_ih, s.I, 0.f, dx, s.I);  // beta 0 overwrites
  sgemm(CblasTrans, CblasNoTrans, G, s.I, TN, dgates, G, x, s.I, 1.f, dw_ih, s.I);    // beta 1 accumulates
  // h_{t-1} is y's row block t - 1 for the steps after the first, h0 for the first.
  if (s.T > 1) sgemm(CblasTrans, CblasNoTrans, G, H, (s.T - 1) * N, dgates + N * G, G, y, H, 1.f, dw_hh, H);
  if (h0) sgemm(CblasTrans, CblasNoTrans, G, H, N, dgates, G, h0, H, 1.f, dw_hh, H);
  // Both biases get the same gradient: each column summed in float64, then
  // added once (one rounding per entry, and no scratch of 4H accumulators).
  for (int64_t j = 0; j < G; j++) {
    double sum = 0;
    for (int64_t row = 0; row < TN; row++) sum += dgates[row * G + j];
    db_ih[j] = static_cast<float>(db_ih[j] + sum);
    db_hh[j] = static_cast<float>(db_hh[j] + sum);
  }
}

}  // namespace tandem::kernels::cpu
