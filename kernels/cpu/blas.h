// The one OpenBLAS call the CPU kernels make (matmul, conv2d, lstm).
#pragma once

#include <cblas.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "runtime/core/error.h"

namespace tandem::kernels::cpu {

// Multiply-adds below which a GEMM runs single-threaded (Note [BLAS threads]).
constexpr double kSmallSgemm = 4e6;

// Row-major C (M, Nc) = op(A) op(B) + beta C, with op(A) (M, K) and op(B)
// (K, Nc). Empty products are handled here, so BLAS only ever sees
// positive sizes: K == 0 makes the product zero (C = beta C).
inline void sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t Nc, int64_t K, const float* A,
                  int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || Nc == 0) return;
  constexpr int64_t kMax = std::numeric_limits<blasint>::max();
  TANDEM_CHECK(M <= kMax && Nc <= kMax && K <= kMax && lda <= kMax && ldb <= kMax && ldc <= kMax,
               "sgemm: a dimension exceeds what this OpenBLAS build indexes");
  if (K == 0) {
    if (beta == 0.f) std::fill(C, C + M * ldc, 0.f);
    return;  // beta == 1: C += 0
  }
  // Note [BLAS threads]: a small product runs on this thread alone. Split
  // over OpenBLAS's threads it costs more in hand-offs than it saves, and
  // the helper threads keep spinning after it, taking cores from the
  // elementwise work in between: one conv2d GEMM per image made a ResNet
  // step 2.1x slower on two threads than on one (454 vs 211 ms), while the
  // LSTM's whole-sequence GEMMs gain from two (220 vs 279 ms). Choosing per
  // call gives each its better case (213 and 196 ms). The count only sets
  // how many of the threads OpenBLAS started may work, so calls from
  // several threads stay safe.
  static const int threads = openblas_get_num_threads();
  const double products = static_cast<double>(M) * static_cast<double>(Nc) * static_cast<double>(K);
  openblas_set_num_threads(products < kSmallSgemm ? 1 : threads);
  cblas_sgemm(CblasRowMajor, ta, tb, static_cast<blasint>(M), static_cast<blasint>(Nc), static_cast<blasint>(K),
              1.f, A, static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

}  // namespace tandem::kernels::cpu
