// Streams and events. On a CUDA device a Stream wraps a cudaStream_t; on the
// CPU work runs synchronously on the calling thread, so a CPU stream and its
// events are no-ops that keep the same calling code valid on both devices.
#pragma once

#include <memory>

#include "runtime/core/device.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*; named here so that
struct CUevent_st;   // headers need not include the CUDA runtime.

namespace tandem {

class Stream {
 public:
  Stream() = default;  // the CPU stream
  // The device's legacy default stream (cuda) or the CPU stream.
  static Stream default_for(Device device);
  // A new non-blocking stream on `device` (the CPU stream on cpu).
  static Stream create(Device device);

  Device device() const { return device_; }
  CUstream_st* cuda() const { return handle_.get(); }
  void synchronize() const;

 private:
  Device device_ = Device::cpu();
  std::shared_ptr<CUstream_st> handle_;
};

class Event {
 public:
  Event() = default;
  // timing = true lets elapsed_ms read it; otherwise it is a sync-only event.
  static Event create(Device device, bool timing = false);

  void record(const Stream& stream);
  // Makes `stream` wait for this event's work without blocking the host.
  void wait_on(const Stream& stream) const;
  void synchronize() const;
  // Milliseconds from `start` to this event (both recorded with timing on).
  float elapsed_ms_since(const Event& start) const;

 private:
  Device device_ = Device::cpu();
  std::shared_ptr<CUevent_st> handle_;
};

// Makes `device` current on this thread (no-op on cpu).
void set_current_device(Device device);

}  // namespace tandem
