// cuDNN, loaded at run time. Only kernels/cuda/ includes this header.
//
// Note [cuDNN is loaded lazily]: tandem does not link libcudnn. The first
// cuDNN-backed call (conv2d or lstm on CUDA) dlopens "libcudnn.so.9" and
// resolves, with dlsym, exactly the functions listed in TANDEM_CUDNN_SYMBOLS
// into a table of pointers typed from cudnn.h. A machine without cuDNN (or
// with cuDNN only inside PyTorch's pip wheel, found through
// LD_LIBRARY_PATH) still starts every binary and runs every other CUDA
// kernel; only a cuDNN path fails, with a UserError that says what to
// install. cuDNN 9's libcudnn.so.9 is a small shim that loads its
// sub-libraries (ops, cnn, adv, engines) on demand, so one dlopen is enough.
//
// Calls go through CUDNN_CALL(cudnnXxx, args...), which reads the pointer
// from the table and turns a failed status into a LibraryError with
// cuDNN's own message (calling cudnnXxx directly would link libcudnn).
#pragma once

#include <cuda_runtime.h>
#include <cudnn.h>

#include "runtime/core/dtype.h"
#include "runtime/core/error.h"

// Every cuDNN function tandem calls, one line each. Add a line here before
// calling a new one; a library that lacks any of them is rejected at load.
#define TANDEM_CUDNN_SYMBOLS(X)                                                                     \
  X(cudnnGetVersion)                                                                                \
  X(cudnnGetErrorString)                                                                            \
  X(cudnnCreate)                                                                                    \
  X(cudnnSetStream)                                                                                 \
  X(cudnnCreateTensorDescriptor)                                                                    \
  X(cudnnDestroyTensorDescriptor)                                                                   \
  X(cudnnSetTensor4dDescriptor)                                                                     \
  X(cudnnSetTensorNdDescriptor)                                                                     \
  X(cudnnGetTensorNdDescriptor)                                                                     \
  X(cudnnCreateFilterDescriptor)                                                                    \
  X(cudnnDestroyFilterDescriptor)                                                                   \
  X(cudnnSetFilter4dDescriptor)                                                                     \
  X(cudnnCreateConvolutionDescriptor)                                                               \
  X(cudnnDestroyConvolutionDescriptor)                                                              \
  X(cudnnSetConvolution2dDescriptor)                                                                \
  X(cudnnSetConvolutionMathType)                                                                    \
  X(cudnnGetConvolution2dForwardOutputDim)                                                          \
  X(cudnnGetConvolutionForwardAlgorithmMaxCount)                                                    \
  X(cudnnGetConvolutionForwardAlgorithm_v7)                                                         \
  X(cudnnGetConvolutionForwardWorkspaceSize)                                                        \
  X(cudnnConvolutionForward)                                                                        \
  X(cudnnGetConvolutionBackwardDataAlgorithmMaxCount)                                               \
  X(cudnnGetConvolutionBackwardDataAlgorithm_v7)                                                    \
  X(cudnnGetConvolutionBackwardDataWorkspaceSize)                                                   \
  X(cudnnConvolutionBackwardData)                                                                   \
  X(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount)                                             \
  X(cudnnGetConvolutionBackwardFilterAlgorithm_v7)                                                  \
  X(cudnnGetConvolutionBackwardFilterWorkspaceSize)                                                 \
  X(cudnnConvolutionBackwardFilter)                                                                 \
  X(cudnnCreateDropoutDescriptor)                                                                   \
  X(cudnnDestroyDropoutDescriptor)                                                                  \
  X(cudnnSetDropoutDescriptor)                                                                      \
  X(cudnnCreateRNNDescriptor)                                                                       \
  X(cudnnDestroyRNNDescriptor)                                                                      \
  X(cudnnSetRNNDescriptor_v8)                                                                       \
  X(cudnnCreateRNNDataDescriptor)                                                                   \
  X(cudnnDestroyRNNDataDescriptor)                                                                  \
  X(cudnnSetRNNDataDescriptor)                                                                      \
  X(cudnnGetRNNWeightSpaceSize)                                                                     \
  X(cudnnGetRNNTempSpaceSizes)                                                                      \
  X(cudnnGetRNNWeightParams)                                                                        \
  X(cudnnRNNForward)                                                                                \
  X(cudnnRNNBackwardData_v8)                                                                        \
  X(cudnnRNNBackwardWeights_v8)

namespace tandem::kernels::cuda {

// The resolved functions, each typed exactly as cudnn.h declares it.
struct CudnnApi {
#define TANDEM_CUDNN_POINTER(name) decltype(&::name) name = nullptr;
  TANDEM_CUDNN_SYMBOLS(TANDEM_CUDNN_POINTER)
#undef TANDEM_CUDNN_POINTER
  size_t version = 0;  // cudnnGetVersion(): major * 10000 + minor * 100 + patch
};

// The table, loaded on the first call (thread-safe). Throws UserError when
// libcudnn.so.9 cannot be loaded, lacks a function or is not cuDNN 9; a
// later call tries again.
const CudnnApi& cudnn();

// Throws a LibraryError naming `call` unless `status` is success.
void cudnn_check(cudnnStatus_t status, const char* call, const char* file, int line);

// One handle per (device, stream), made on first use and kept for the life
// of the process, as the cuBLASLt handles (Note [cuBLASLt setup] in
// kernels/cuda/matmul.cu). The stream is bound once at creation: a handle
// is never re-pointed, so two threads on two streams never share one.
// stream nullptr is the legacy default stream (used for size queries).
cudnnHandle_t cudnn_handle(int device, cudaStream_t stream);

// The cuDNN storage type of `dtype`: f32, bf16 or f16; anything else is a
// UserError naming `op`.
cudnnDataType_t cudnn_data_type(DType dtype, const char* op);

// Makes `device` current for a scope (handles and one-time allocations
// must be made on the device they serve).
class DeviceScope {
 public:
  explicit DeviceScope(int device);
  ~DeviceScope();
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace tandem::kernels::cuda

// CUDNN_CALL(cudnnConvolutionForward, handle, ...): calls the loaded
// function and throws a LibraryError (cuDNN's message, the call,
// file:line) unless it returns CUDNN_STATUS_SUCCESS.
#define CUDNN_CALL(fn, ...)                                                                         \
  ::tandem::kernels::cuda::cudnn_check(::tandem::kernels::cuda::cudnn().fn(__VA_ARGS__),            \
                                       #fn "(" #__VA_ARGS__ ")", __FILE__, __LINE__)
