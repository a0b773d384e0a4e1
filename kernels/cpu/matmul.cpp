// CPU reference for the Linear matmul: one OpenBLAS sgemm per product, then
// the epilogue unfused (bias, keep pre_gelu, GELU). See kernels/matmul.h.

#include <algorithm>

#include "kernels/activation.h"
#include "kernels/cpu/blas.h"
#include "kernels/matmul.h"

namespace tandem::kernels::cpu {

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
