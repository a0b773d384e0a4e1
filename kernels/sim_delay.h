// What a simulated network needs from the device (runtime/parallel/
// simulated_communicator.h): a delay that occupies a stream, and the two
// data movements that turn one rank's buffer into what a world of identical
// ranks would leave there (a sum over n identical inputs is the input times
// n; a gather of identical blocks is copies).
//
// Note [Delay on a stream]
// On CUDA, sim_delay launches one thread that spins on %globaltimer (the
// GPU's nanosecond clock, the one CUDA events read) until `ns` have passed
// since it started, napping with __nanosleep between reads so that it issues
// almost nothing and holds one warp slot of one SM. The stream is busy for
// `ns` and everything queued behind it waits, as behind a NCCL kernel that
// waits for the wire; the host is not blocked. The delay counts from when
// the kernel starts, which is after everything before it on the stream.
// On the CPU the "stream" is the calling thread, so the twin sleeps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/common.h"

namespace tandem::kernels {

namespace cpu {
void sim_delay(int64_t ns);
// x[i] *= factor for n elements of dtype (f32, bf16: through fp32, rounded
// to nearest even; i32: wrapping as two's complement).
void scale(void* x, int64_t n, DType dtype, int64_t factor);
// memmove: dst and src may overlap.
void copy_bytes(void* dst, const void* src, size_t bytes);
}  // namespace cpu

namespace cuda {
void sim_delay(int64_t ns, CUstream_st* stream);
void scale(void* x, int64_t n, DType dtype, int64_t factor, CUstream_st* stream);
// Device to device, asynchronous on `stream`; dst and src must not overlap.
void copy_bytes(void* dst, const void* src, size_t bytes, CUstream_st* stream);
}  // namespace cuda

// Occupies `stream` for `ns` nanoseconds (Note [Delay on a stream]); ns <= 0
// does nothing.
inline void sim_delay(int64_t ns, const Stream& stream) {
  if (ns <= 0) return;
  if (stream.device().is_cpu()) {
    cpu::sim_delay(ns);
  } else {
    TANDEM_CUDA_ONLY(cuda::sim_delay(ns, stream.cuda()));
  }
}

inline bool can_scale(DType dtype) { return dtype == DType::f32 || dtype == DType::bf16 || dtype == DType::i32; }

// x[i] *= factor, in place, for `n` elements of `dtype` at `x` on the
// stream's device: the sum over `factor` identical ranks. f32 and bf16
// compute in fp32 (one rounding, so a bf16 result can differ in the last
// bit from adding `factor` bf16 values one by one); i32 is exact.
inline void scale(void* x, int64_t n, DType dtype, int64_t factor, const Stream& stream) {
  TANDEM_CHECK(n >= 0 && (n == 0 || x), "scale: bad buffer");
  TANDEM_CHECK(can_scale(dtype), std::string("scale: unsupported dtype ") + dtype_name(dtype) +
                                     " (f32, bf16 and i32 are supported)");
  if (n == 0 || factor == 1) return;
  if (stream.device().is_cpu()) {
    cpu::scale(x, n, dtype, factor);
  } else {
    TANDEM_CUDA_ONLY(cuda::scale(x, n, dtype, factor, stream.cuda()));
  }
}

// Copies `bytes` from src to dst, both on the stream's device; dst == src
// is a no-op, any other overlap is a programming error.
inline void copy_bytes(void* dst, const void* src, size_t bytes, const Stream& stream) {
  if (bytes == 0 || dst == src) return;
  auto d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
  TANDEM_CHECK(d + bytes <= s || s + bytes <= d, "copy_bytes: dst partly overlaps src");
  if (stream.device().is_cpu()) {
    cpu::copy_bytes(dst, src, bytes);
  } else {
    TANDEM_CUDA_ONLY(cuda::copy_bytes(dst, src, bytes, stream.cuda()));
  }
}

}  // namespace tandem::kernels
