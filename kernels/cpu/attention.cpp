// CPU reference for causal multi-head attention. See kernels/attention.h.
// Plain fp32 loops over (B, NH, T, T). The forward takes one pass over the
// keys of a row with an online softmax (a running max m and sum l; when m
// grows, what was summed is rescaled by exp(old m - new m)), so each score
// and exp is computed once and no row of scores is stored. The backward
// recomputes p from qkv and lse, as the CUDA one does.
#include <cmath>

#include "kernels/attention.h"

namespace tandem::kernels::cpu {

namespace {

// Where head h's vectors of position t in batch b start, in qkv (B, T, 3C)
// and in out (B, T, C).
struct Layout {
  int64_t T, NH, HS;
  int64_t C() const { return NH * HS; }
  int64_t q(int64_t b, int64_t t, int64_t h) const { return (b * T + t) * 3 * C() + h * HS; }
  int64_t k(int64_t b, int64_t t, int64_t h) const { return q(b, t, h) + C(); }
  int64_t v(int64_t b, int64_t t, int64_t h) const { return q(b, t, h) + 2 * C(); }
  int64_t o(int64_t b, int64_t t, int64_t h) const { return (b * T + t) * C() + h * HS; }
  int64_t row(int64_t b, int64_t h, int64_t t) const { return (b * NH + h) * T + t; }  // lse (B, NH, T)
};

// Four partial sums: independent chains the compiler vectorizes (one chain
// would serialize on the additions, which it may not reorder).
float dot(const float* a, const float* b, int64_t n) {
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
  int64_t c = 0;
  for (; c + 4 <= n; c += 4) {
    s0 += a[c] * b[c];
    s1 += a[c + 1] * b[c + 1];
    s2 += a[c + 2] * b[c + 2];
    s3 += a[c + 3] * b[c + 3];
  }
  for (; c < n; c++) s0 += a[c] * b[c];
  return (s0 + s1) + (s2 + s3);
}

// One (i, j) pair's share: dq_i += g k_j, dk_j += g q_i, dv_j += p dy_i.
// The six rows never overlap (distinct columns of qkv, or distinct
// tensors), which __restrict tells the compiler so that it vectorizes.
void add_pair(float* __restrict dq, float* __restrict dk, float* __restrict dv, const float* __restrict q,
              const float* __restrict k, const float* __restrict dy, float g, float p, int64_t HS) {
  for (int64_t c = 0; c < HS; c++) {
    dq[c] += g * k[c];
    dk[c] += g * q[c];
    dv[c] += p * dy[c];
  }
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t NH, int64_t HS) {
  Layout L{T, NH, HS};
  const float scale = 1.f / std::sqrt(static_cast<float>(HS));
  for (int64_t b = 0; b < B; b++) {
    for (int64_t h = 0; h < NH; h++) {
      for (int64_t i = 0; i < T; i++) {
        const float* q = qkv + L.q(b, i, h);
        float* o = out + L.o(b, i, h);
        for (int64_t c = 0; c < HS; c++) o[c] = 0.f;
        float m = -INFINITY, l = 0.f;  // causal: keys j <= i only
        for (int64_t j = 0; j <= i; j++) {
          float s = scale * dot(q, qkv + L.k(b, j, h), HS);
          if (s > m) {
            float shrink = std::exp(m - s);  // 0 for the first key (m = -inf)
            for (int64_t c = 0; c < HS; c++) o[c] *= shrink;
            l *= shrink;
            m = s;
          }
          float p = std::exp(s - m);
          l += p;
          const float* v = qkv + L.v(b, j, h);
          for (int64_t c = 0; c < HS; c++) o[c] += p * v[c];
        }
        for (int64_t c = 0; c < HS; c++) o[c] /= l;
        float row_lse = m + std::log(l);
        lse[L.row(b, h, i)] = row_lse;
      }
    }
  }
}

// For each query row i: D_i, then every (i, j <= i) pair adds its share to
// dq_i, dk_j and dv_j, which start at zero (dqkv is overwritten).
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out, const float* lse,
                        int64_t B, int64_t T, int64_t NH, int64_t HS) {
  Layout L{T, NH, HS};
  const float scale = 1.f / std::sqrt(static_cast<float>(HS));
  for (int64_t i = 0; i < B * T * 3 * L.C(); i++) dqkv[i] = 0.f;
  for (int64_t b = 0; b < B; b++) {
    for (int64_t h = 0; h < NH; h++) {
      for (int64_t i = 0; i < T; i++) {
        const float* q = qkv + L.q(b, i, h);
        const float* dy = dout + L.o(b, i, h);
        float D = dot(dy, out + L.o(b, i, h), HS);
        float row_lse = lse[L.row(b, h, i)];
        float* dq = dqkv + L.q(b, i, h);
        for (int64_t j = 0; j <= i; j++) {
          const float* k = qkv + L.k(b, j, h);
          const float* v = qkv + L.v(b, j, h);
          float p = std::exp(scale * dot(q, k, HS) - row_lse);
          float ds = p * (dot(dy, v, HS) - D);
          add_pair(dq, dqkv + L.k(b, j, h), dqkv + L.v(b, j, h), q, k, dy, scale * ds, p, HS);
        }
      }
    }
  }
}

}  // namespace tandem::kernels::cpu
