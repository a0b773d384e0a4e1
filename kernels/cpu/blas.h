// The one OpenBLAS call the CPU kernels make (matmul, conv2d, lstm).
#pragma once

#include <cblas.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "runtime/core/error.h"

namespace tandem::kernels::cpu {

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
  cblas_sgemm(CblasRowMajor, ta, tb, static_cast<blasint>(M), static_cast<blasint>(Nc), static_cast<blasint>(K),
              1.f, A, static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

}  // namespace tandem::kernels::cpu
