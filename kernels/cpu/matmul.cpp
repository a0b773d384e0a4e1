// CPU reference for the Linear matmul: one OpenBLAS sgemm per product, then
// the epilogue unfused (bias, keep pre_gelu, GELU). See kernels/matmul.h.
#include <cblas.h>

#include <algorithm>
#include <limits>

#include "kernels/activation.h"
#include "kernels/matmul.h"

namespace tandem::kernels::cpu {

namespace {

// Row-major C (M, Nc) = alpha op(A) op(B) + beta C, with op(A) (M, K) and
// op(B) (K, Nc). Empty products are handled here, so BLAS only ever sees
// positive sizes: K == 0 makes the product zero (C = beta C).
void sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t Nc, int64_t K, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || Nc == 0) return;
  constexpr int64_t kMax = std::numeric_limits<blasint>::max();
  TANDEM_CHECK(M <= kMax && Nc <= kMax && K <= kMax && lda <= kMax && ldb <= kMax && ldc <= kMax,
               "matmul: a dimension exceeds what this OpenBLAS build indexes");
  if (K == 0) {
    if (beta == 0.f) std::fill(C, C + M * ldc, 0.f);
    return;  // beta == 1: C += 0
  }
  cblas_sgemm(CblasRowMajor, ta, tb, static_cast<blasint>(M), static_cast<blasint>(Nc), static_cast<blasint>(K),
              1.f, A, static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

}  // namespace

void matmul_forward(float* out, float* pre_gelu, const float* inp, const float* weight, const float* bias,
                    Epilogue epilogue, int64_t N, int64_t C, int64_t OC) {
  // With GELU the product lands in pre_gelu (kept for backward), and out
  // receives gelu(pre_gelu).
  float* target = epilogue == Epilogue::gelu_bias ? pre_gelu : out;
  // target (N, OC) = inp (N, C) @ weight^T, weight stored (OC, C).
  sgemm(CblasNoTrans, CblasTrans, N, OC, C, inp, C, weight, C, 0.f, target, OC);
  if (epilogue != Epilogue::none) bias_add(target, bias, N, OC);
  if (epilogue == Epilogue::gelu_bias) gelu_forward(out, pre_gelu, N * OC);
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t N, int64_t C, int64_t OC) {
  // dinp (N, C) = dout (N, OC) @ weight (OC, C), overwritten (beta 0).
  if (dinp) sgemm(CblasNoTrans, CblasNoTrans, N, C, OC, dout, OC, weight, C, 0.f, dinp, C);
  // dweight (OC, C) += dout^T (OC, N) @ inp (N, C), accumulated (beta 1).
  if (dweight) sgemm(CblasTrans, CblasNoTrans, OC, C, N, dout, OC, inp, C, 1.f, dweight, C);
  if (dbias) bias_backward(dbias, dout, N, OC);
}

}  // namespace tandem::kernels::cpu
