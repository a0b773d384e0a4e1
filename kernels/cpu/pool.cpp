// CPU reference for 2-D pooling. See kernels/pool.h.
// Each (n, c) plane is pooled on its own; sums are accumulated in fp64 so
// that this twin is a tight oracle for the CUDA kernels (kernels/cuda/pool.cu).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "kernels/pool.h"

namespace tandem::kernels::cpu {

namespace {

// The real (unpadded) input rows [h_begin, h_end) and columns [w_begin,
// w_end) under the window of output (p, q). Floor mode and padding <= half
// the window keep both ranges non-empty (kernels/pool.h).
struct Window {
  int64_t h_begin, h_end, w_begin, w_end;
  int64_t count() const { return (h_end - h_begin) * (w_end - w_begin); }
};

Window window_at(const Pool2dShape& s, int64_t p, int64_t q) {
  int64_t h0 = p * s.stride_h - s.pad_h, w0 = q * s.stride_w - s.pad_w;
  return {std::max<int64_t>(h0, 0), std::min(h0 + s.R, s.H), std::max<int64_t>(w0, 0), std::min(w0 + s.S, s.W)};
}

// What an average divides by: the whole window, padded zeros included, or
// only its real positions.
int64_t divisor(const Pool2dShape& s, const Window& win, bool count_include_pad) {
  return count_include_pad ? s.R * s.S : win.count();
}

}  // namespace

void maxpool2d_forward(float* out, int32_t* argmax, const float* inp, const Pool2dShape& s) {
  const int64_t P = s.P(), Q = s.Q(), HW = s.H * s.W;
  for (int64_t plane = 0; plane < s.N * s.C; plane++) {
    const float* x = inp + plane * HW;
    for (int64_t p = 0; p < P; p++) {
      for (int64_t q = 0; q < Q; q++) {
        Window win = window_at(s, p, q);
        // Padding is never looked at, so it never wins; strictly greater
        // keeps the first of equal maxima; a NaN replaces anything (PyTorch CPU).
        float best = -std::numeric_limits<float>::infinity();
        int64_t where = win.h_begin * s.W + win.w_begin;
        for (int64_t h = win.h_begin; h < win.h_end; h++) {
          for (int64_t w = win.w_begin; w < win.w_end; w++) {
            float v = x[h * s.W + w];
            if (v > best || std::isnan(v)) {
              best = v;
              where = h * s.W + w;
            }
          }
        }
        out[(plane * P + p) * Q + q] = best;
        argmax[(plane * P + p) * Q + q] = static_cast<int32_t>(where);
      }
    }
  }
}

void maxpool2d_backward(float* dinp, const float* dout, const int32_t* argmax, const Pool2dShape& s) {
  const int64_t PQ = s.P() * s.Q(), HW = s.H * s.W;
  for (int64_t plane = 0; plane < s.N * s.C; plane++) {
    float* dx = dinp + plane * HW;
    std::fill(dx, dx + HW, 0.f);
    for (int64_t i = 0; i < PQ; i++) {
      int32_t where = argmax[plane * PQ + i];
      // A bad index would write outside the plane: an internal bug (argmax
      // is the forward's), caught here rather than as memory corruption.
      TANDEM_CHECK(where >= 0 && where < HW, "maxpool2d_backward: argmax " + std::to_string(where) +
                                                 " outside an input plane of " + std::to_string(HW));
      dx[where] += dout[plane * PQ + i];
    }
  }
}

void avgpool2d_forward(float* out, const float* inp, const Pool2dShape& s, bool count_include_pad) {
  const int64_t P = s.P(), Q = s.Q(), HW = s.H * s.W;
  for (int64_t plane = 0; plane < s.N * s.C; plane++) {
    const float* x = inp + plane * HW;
    for (int64_t p = 0; p < P; p++) {
      for (int64_t q = 0; q < Q; q++) {
        Window win = window_at(s, p, q);
        double sum = 0;
        for (int64_t h = win.h_begin; h < win.h_end; h++)
          for (int64_t w = win.w_begin; w < win.w_end; w++) sum += x[h * s.W + w];
        double d = static_cast<double>(divisor(s, win, count_include_pad));
        out[(plane * P + p) * Q + q] = static_cast<float>(sum / d);
      }
    }
  }
}

void avgpool2d_backward(float* dinp, const float* dout, const Pool2dShape& s, bool count_include_pad) {
  const int64_t P = s.P(), Q = s.Q(), HW = s.H * s.W;
  for (int64_t plane = 0; plane < s.N * s.C; plane++) {
    float* dx = dinp + plane * HW;
    std::fill(dx, dx + HW, 0.f);
    for (int64_t p = 0; p < P; p++) {
      for (int64_t q = 0; q < Q; q++) {
        Window win = window_at(s, p, q);
        float g = static_cast<float>(static_cast<double>(dout[(plane * P + p) * Q + q]) /
                                     static_cast<double>(divisor(s, win, count_include_pad)));
        for (int64_t h = win.h_begin; h < win.h_end; h++)
          for (int64_t w = win.w_begin; w < win.w_end; w++) dx[h * s.W + w] += g;
      }
    }
  }
}

void global_avgpool_forward(float* out, const float* inp, int64_t N, int64_t C, int64_t HW) {
  for (int64_t plane = 0; plane < N * C; plane++) {
    const float* x = inp + plane * HW;
    double sum = 0;
    for (int64_t i = 0; i < HW; i++) sum += x[i];
    out[plane] = static_cast<float>(sum / static_cast<double>(HW));
  }
}

void global_avgpool_backward(float* dinp, const float* dout, int64_t N, int64_t C, int64_t HW) {
  for (int64_t plane = 0; plane < N * C; plane++) {
    float g = static_cast<float>(static_cast<double>(dout[plane]) / static_cast<double>(HW));
    std::fill(dinp + plane * HW, dinp + (plane + 1) * HW, g);
  }
}

}  // namespace tandem::kernels::cpu
