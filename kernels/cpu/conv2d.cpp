// CPU reference for conv2d: per image, im2col into the caller's workspace,
// then one OpenBLAS sgemm (fp32). See kernels/conv2d.h.
//
// With the image's im2col matrix col (C*R*S, P*Q) and weight seen as a
// (K, C*R*S) matrix, every pass is one GEMM per image:
//   forward          out_n (K, PQ)      = weight (K, CRS) x col (CRS, PQ)  (+ bias per row)
//   backward_data    col   (CRS, PQ)    = weight^T x dout_n (K, PQ), then col2im into dinp_n
//   backward_filter  dweight (K, CRS)  += dout_n (K, PQ) x col^T
// col2im is im2col's transpose: it adds every column entry back onto the
// input pixel it was copied from, so overlapping windows sum.
//
// A pointwise convolution (1x1, stride 1, no padding) has col == inp_n
// (C, H*W) itself: it skips im2col/col2im and multiplies the image directly.

#include <algorithm>

#include "kernels/conv2d.h"
#include "kernels/cpu/blas.h"

namespace tandem::kernels::cpu {

namespace {

bool is_pointwise(const Conv2dShape& s) {
  return s.R == 1 && s.S == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 && s.pad_w == 0;
}

// The output indices o in [0, n_out) whose input index o * stride + offset
// lies in [0, size), as [*lo, *hi): outside it a window reads padding.
void inside(int64_t offset, int64_t stride, int64_t size, int64_t n_out, int64_t* lo, int64_t* hi) {
  *lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;  // first o with o * stride + offset >= 0
  int64_t last = size - 1 - offset;                          // o * stride <= last
  *hi = last < 0 ? 0 : std::min(n_out, last / stride + 1);
  *lo = std::min(*lo, *hi);
}

// Walks the im2col matrix of one image: visit(col_entry, input_pixel) for
// every entry that reads inside the image; pad(first, last) for each run
// of entries that read padding. im2col copies, col2im accumulates back.
template <typename Visit, typename Pad>
void for_each_window(const Conv2dShape& s, Visit visit, Pad pad) {
  const int64_t P = s.P(), Q = s.Q(), HW = s.H * s.W;
  int64_t row = 0;  // (c * R + r) * S + k: the entry's row in col
  for (int64_t c = 0; c < s.C; c++)
    for (int64_t r = 0; r < s.R; r++)
      for (int64_t k = 0; k < s.S; k++, row++) {
        const int64_t off_h = r * s.dilation_h - s.pad_h, off_w = k * s.dilation_w - s.pad_w;
        int64_t q_lo, q_hi;
        inside(off_w, s.stride_w, s.W, Q, &q_lo, &q_hi);
        for (int64_t p = 0; p < P; p++) {
          const int64_t entry = (row * P + p) * Q;  // col[row][p * Q]
          const int64_t ih = p * s.stride_h + off_h;
          if (ih < 0 || ih >= s.H) {
            pad(entry, entry + Q);
            continue;
          }
          const int64_t pixel = c * HW + ih * s.W + off_w;  // inp[c][ih][q * stride_w + off_w] at q = 0
          pad(entry, entry + q_lo);
          for (int64_t q = q_lo; q < q_hi; q++) visit(entry + q, pixel + q * s.stride_w);
          pad(entry + q_hi, entry + Q);
        }
      }
}

// col (C*R*S, P*Q) = the windows of x (C, H, W), zeros where they read padding.
void im2col(float* col, const float* x, const Conv2dShape& s) {
  for_each_window(
      s, [&](int64_t e, int64_t i) { col[e] = x[i]; },
      [&](int64_t first, int64_t last) { std::fill(col + first, col + last, 0.f); });
}

// dx (C, H, W) += every entry of col back onto the pixel it came from.
void col2im(float* dx, const float* col, const Conv2dShape& s) {
  for_each_window(
      s, [&](int64_t e, int64_t i) { dx[i] += col[e]; }, [](int64_t, int64_t) {});
}

}  // namespace

void conv2d_forward(float* out, const float* inp, const float* weight, const float* bias, const Conv2dShape& s,
                    float* workspace) {
  const int64_t PQ = s.P() * s.Q(), CRS = s.C * s.R * s.S;
  const bool pointwise = is_pointwise(s);
  for (int64_t n = 0; n < s.N; n++) {
    const float* x = inp + n * s.C * s.H * s.W;
    float* y = out + n * s.K * PQ;
    if (!pointwise) im2col(workspace, x, s);
    // The bias goes in first and the GEMM adds onto it (beta 1): one pass.
    if (bias)
      for (int64_t k = 0; k < s.K; k++) std::fill(y + k * PQ, y + (k + 1) * PQ, bias[k]);
    sgemm(CblasNoTrans, CblasNoTrans, s.K, PQ, CRS, weight, CRS, pointwise ? x : workspace, PQ, bias ? 1.f : 0.f,
          y, PQ);
  }
}

void conv2d_backward_data(float* dinp, const float* dout, const float* weight, const Conv2dShape& s,
                          float* workspace) {
  const int64_t PQ = s.P() * s.Q(), CRS = s.C * s.R * s.S, CHW = s.C * s.H * s.W;
  const bool pointwise = is_pointwise(s);
  for (int64_t n = 0; n < s.N; n++) {
    const float* dy = dout + n * s.K * PQ;
    float* dx = dinp + n * CHW;
    // (CRS, PQ) = weight^T (CRS, K) x dy (K, PQ); beta 0 overwrites.
    sgemm(CblasTrans, CblasNoTrans, CRS, PQ, s.K, weight, CRS, dy, PQ, 0.f, pointwise ? dx : workspace, PQ);
    if (pointwise) continue;
    std::fill(dx, dx + CHW, 0.f);  // dinp is overwritten; col2im only adds
    col2im(dx, workspace, s);
  }
}

void conv2d_backward_filter(float* dweight, float* dbias, const float* dout, const float* inp, const Conv2dShape& s,
                            float* workspace) {
  const int64_t PQ = s.P() * s.Q(), CRS = s.C * s.R * s.S;
  const bool pointwise = is_pointwise(s);
  for (int64_t n = 0; n < s.N; n++) {
    const float* x = inp + n * s.C * s.H * s.W;
    if (!pointwise) im2col(workspace, x, s);
    // dweight (K, CRS) += dy (K, PQ) x col^T (PQ, CRS); beta 1 accumulates.
    sgemm(CblasNoTrans, CblasTrans, s.K, CRS, PQ, dout + n * s.K * PQ, PQ, pointwise ? x : workspace, PQ, 1.f,
          dweight, CRS);
  }
  if (!dbias) return;
  // Each channel summed over every image in float64, then added once: one
  // rounding per channel, and no scratch of K accumulators.
  for (int64_t k = 0; k < s.K; k++) {
    double sum = 0;
    for (int64_t n = 0; n < s.N; n++) {
      const float* dy = dout + (n * s.K + k) * PQ;
      for (int64_t i = 0; i < PQ; i++) sum += dy[i];
    }
    dbias[k] = static_cast<float>(dbias[k] + sum);
  }
}

}  // namespace tandem::kernels::cpu
