// Loading cuDNN with dlopen, its handles, its dtypes. See Note [cuDNN is
// loaded lazily] in kernels/cuda/cudnn_library.h.
#include "kernels/cuda/cudnn_library.h"

#include <dlfcn.h>

#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>

#include "runtime/core/cuda_check.h"

namespace tandem::kernels::cuda {

namespace {

// The soname of cuDNN 9: the major version is part of the ABI, so a cuDNN
// 8 or 10 is never picked up by accident.
constexpr const char* kLibrary = "libcudnn.so.9";
constexpr size_t kMajor = 9;

[[noreturn]] void unusable(const std::string& why) {
  throw UserError("cuDNN is needed for conv2d and lstm on CUDA, but " + why +
                  ". Install cuDNN 9 (NVIDIA's package or pip's nvidia-cudnn-cu13), or put the directory "
                  "holding " + kLibrary + " on LD_LIBRARY_PATH");
}

CudnnApi load() {
  // Never dlclose'd: the table's pointers live as long as the process.
  void* lib = dlopen(kLibrary, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* err = dlerror();
    unusable(std::string(kLibrary) + " could not be loaded (" + (err ? err : "no reason given") + ")");
  }
  CudnnApi api;
  auto resolve = [&](auto& pointer, const char* name) {
    void* symbol = dlsym(lib, name);
    if (!symbol) unusable(std::string(kLibrary) + " has no " + name + " (not cuDNN 9, or one older than tandem needs)");
    pointer = reinterpret_cast<std::remove_reference_t<decltype(pointer)>>(symbol);
  };
#define TANDEM_CUDNN_RESOLVE(name) resolve(api.name, #name);
  TANDEM_CUDNN_SYMBOLS(TANDEM_CUDNN_RESOLVE)
#undef TANDEM_CUDNN_RESOLVE
  api.version = api.cudnnGetVersion();
  if (api.version / 10000 != kMajor)
    unusable(std::string(kLibrary) + " reports version " + std::to_string(api.version) + ", not 9.x");
  return api;
}

}  // namespace

const CudnnApi& cudnn() {
  // A throwing initializer leaves the static uninitialized, so the next
  // call tries again (and explains again).
  static const CudnnApi api = load();
  return api;
}

void cudnn_check(cudnnStatus_t status, const char* call, const char* file, int line) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  throw_library_error("cuDNN", static_cast<int>(status), cudnn().cudnnGetErrorString(status), call, file, line);
}

DeviceScope::DeviceScope(int device) {
  CUDA_CHECK(cudaGetDevice(&previous_));
  CUDA_CHECK(cudaSetDevice(device));
}

DeviceScope::~DeviceScope() { cudaSetDevice(previous_); }

cudnnHandle_t cudnn_handle(int device, cudaStream_t stream) {
  static std::mutex mutex;
  static std::map<std::pair<int, cudaStream_t>, cudnnHandle_t> handles;
  cudnn();  // load outside the lock: loading may throw
  std::lock_guard<std::mutex> lock(mutex);
  auto it = handles.find({device, stream});
  if (it != handles.end()) return it->second;
  DeviceScope scope(device);
  cudnnHandle_t handle = nullptr;
  CUDNN_CALL(cudnnCreate, &handle);
  CUDNN_CALL(cudnnSetStream, handle, stream);
  handles.emplace(std::make_pair(device, stream), handle);
  return handle;
}

cudnnDataType_t cudnn_data_type(DType dtype, const char* op) {
  switch (dtype) {
    case DType::f32: return CUDNN_DATA_FLOAT;
    case DType::bf16: return CUDNN_DATA_BFLOAT16;
    case DType::f16: return CUDNN_DATA_HALF;
    default: throw UserError(std::string(op) + ": cuDNN takes f32, bf16 or f16 tensors, not " + dtype_name(dtype));
  }
}

}  // namespace tandem::kernels::cuda
