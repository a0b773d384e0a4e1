// CHECK macros for the CUDA runtime, cuBLAS, cuBLASLt and NCCL. Include
// only from code that uses those libraries; each macro names the library's
// own error-string function, so only code that expands it links that library.
// cuDNN is loaded at run time and has its own, CUDNN_CALL
// (kernels/cuda/cudnn_library.h).
#pragma once

#include "runtime/core/error.h"

#define CUDA_CHECK(call)                                                                   \
  do {                                                                                     \
    cudaError_t status_ = (call);                                                          \
    if (status_ != cudaSuccess)                                                            \
      ::tandem::throw_library_error("CUDA", static_cast<int>(status_),                    \
                                    cudaGetErrorString(status_), #call, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: catches bad launch configurations at the launch site.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

#define CUBLAS_CHECK(call)                                                                    \
  do {                                                                                        \
    cublasStatus_t status_ = (call);                                                          \
    if (status_ != CUBLAS_STATUS_SUCCESS)                                                     \
      ::tandem::throw_library_error("cuBLAS", static_cast<int>(status_),                     \
                                    cublasGetStatusString(status_), #call, __FILE__, __LINE__); \
  } while (0)

// cuBLASLt reports cublasStatus_t too, but its string function lives in
// libcublasLt, so code that links only cuBLASLt uses this one.
#define CUBLASLT_CHECK(call)                                                                      \
  do {                                                                                            \
    cublasStatus_t status_ = (call);                                                              \
    if (status_ != CUBLAS_STATUS_SUCCESS)                                                         \
      ::tandem::throw_library_error("cuBLASLt", static_cast<int>(status_),                       \
                                    cublasLtGetStatusString(status_), #call, __FILE__, __LINE__); \
  } while (0)

#define NCCL_CHECK(call)                                                                   \
  do {                                                                                     \
    ncclResult_t status_ = (call);                                                         \
    if (status_ != ncclSuccess)                                                            \
      ::tandem::throw_library_error("NCCL", static_cast<int>(status_),                    \
                                    ncclGetErrorString(status_), #call, __FILE__, __LINE__); \
  } while (0)
