#include "runtime/core/stream.h"

#include "runtime/core/error.h"

#if TANDEM_HAS_CUDA
#include <cuda_runtime.h>

#include "runtime/core/cuda_check.h"
#endif

namespace tandem {

#if TANDEM_HAS_CUDA

bool cuda_built() { return true; }

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
}

void set_current_device(Device device) {
  if (device.is_cuda()) CUDA_CHECK(cudaSetDevice(device.index));
}

Stream Stream::default_for(Device device) {
  Stream s;
  s.device_ = device;  // a null handle is the legacy default stream
  return s;
}

Stream Stream::create(Device device) {
  Stream s;
  s.device_ = device;
  if (device.is_cuda()) {
    set_current_device(device);
    cudaStream_t raw = nullptr;
    CUDA_CHECK(cudaStreamCreateWithFlags(&raw, cudaStreamNonBlocking));
    s.handle_ = std::shared_ptr<CUstream_st>(raw, [](cudaStream_t h) { cudaStreamDestroy(h); });
  }
  return s;
}

void Stream::synchronize() const {
  if (device_.is_cuda()) CUDA_CHECK(cudaStreamSynchronize(handle_.get()));
}

Event Event::create(Device device, bool timing) {
  Event e;
  e.device_ = device;
  if (device.is_cuda()) {
    set_current_device(device);
    cudaEvent_t raw = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&raw, timing ? cudaEventDefault : cudaEventDisableTiming));
    e.handle_ = std::shared_ptr<CUevent_st>(raw, [](cudaEvent_t h) { cudaEventDestroy(h); });
  }
  return e;
}

void Event::record(const Stream& stream) {
  TANDEM_CHECK(stream.device() == device_, "event and stream on different devices");
  if (device_.is_cuda()) CUDA_CHECK(cudaEventRecord(handle_.get(), stream.cuda()));
}

void Event::wait_on(const Stream& stream) const {
  if (device_.is_cuda()) CUDA_CHECK(cudaStreamWaitEvent(stream.cuda(), handle_.get(), 0));
}

void Event::synchronize() const {
  if (device_.is_cuda()) CUDA_CHECK(cudaEventSynchronize(handle_.get()));
}

float Event::elapsed_ms_since(const Event& start) const {
  TANDEM_CHECK(device_.is_cuda(), "elapsed_ms_since needs CUDA events; time CPU work with a clock");
  float ms = 0.f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start.handle_.get(), handle_.get()));
  return ms;
}

#else  // CPU-only build: every device is the CPU, and CPU work is synchronous.

bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
void set_current_device(Device device) {
  TANDEM_CHECK(device.is_cpu(), "this build has no CUDA");
}
Stream Stream::default_for(Device device) { return create(device); }
Stream Stream::create(Device device) {
  set_current_device(device);
  return Stream();
}
void Stream::synchronize() const {}
Event Event::create(Device device, bool) {
  set_current_device(device);
  return Event();
}
void Event::record(const Stream&) {}
void Event::wait_on(const Stream&) const {}
void Event::synchronize() const {}
float Event::elapsed_ms_since(const Event&) const {
  TANDEM_CHECK(false, "elapsed_ms_since needs CUDA events; time CPU work with a clock");
}

#endif

}  // namespace tandem
