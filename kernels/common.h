// Shared by the dispatching headers kernels/x.h. Each op family has:
//   kernels/x.h         Tensor-level functions: check shapes/dtypes/devices,
//                       then call the CPU or the CUDA version below;
//   kernels/cpu/x.cpp   namespace cpu: plain fp32 loops, the test oracle;
//   kernels/cuda/x.cu   namespace cuda: the fast version, f32 and bf16.
// Both take raw pointers, sizes and (CUDA) a stream; neither allocates.
//
// Note [Gradient writes]: backward kernels OVERWRITE gradients of their
// inputs (activations: dinp = ...) and ACCUMULATE into gradients of
// parameters (dweight += ..., dbias += ...). Parameter gradients are zeroed
// once per optimizer step, so micro-batches (gradient accumulation) simply
// add up; activation gradients need no zeroing at all.
#pragma once

#include <algorithm>
#include <initializer_list>
#include <string>

#include "runtime/core/error.h"
#include "runtime/core/tensor.h"

namespace tandem::kernels {

[[noreturn]] inline void no_cuda_build() {
  throw UserError("a CUDA tensor reached a kernel, but this build has no CUDA (rebuild with -DTANDEM_CUDA=ON)");
}

inline void check_same_device(const Tensor& a, const Tensor& b, const char* op) {
  TANDEM_CHECK(a.device() == b.device(), std::string(op) + ": tensors on " + a.device().str() +
                                             " and " + b.device().str());
}

// Activations and weights: f32 anywhere, bf16 on CUDA only (the CPU path is
// the fp32 reference).
inline void check_float(const Tensor& t, const char* op) {
  TANDEM_CHECK(t.defined(), std::string(op) + ": undefined tensor");
  bool ok = t.dtype() == DType::f32 || (t.dtype() == DType::bf16 && t.device().is_cuda());
  TANDEM_CHECK(ok, std::string(op) + ": unsupported dtype " + dtype_name(t.dtype()) + " on " +
                       t.device().str());
}

inline void check_same_float(const Tensor& a, const Tensor& b, const char* op) {
  check_float(a, op);
  check_same_device(a, b, op);
  TANDEM_CHECK(a.dtype() == b.dtype(), std::string(op) + ": dtypes " + dtype_name(a.dtype()) +
                                           " and " + dtype_name(b.dtype()));
}

// Whether the bytes of a and b overlap (same device assumed): catches views
// into one buffer as well as the same tensor twice.
inline bool overlaps(const Tensor& a, const Tensor& b) {
  const char* pa = static_cast<const char*>(a.data());
  const char* pb = static_cast<const char*>(b.data());
  return a.nbytes() > 0 && b.nbytes() > 0 && pa < pb + b.nbytes() && pb < pa + a.nbytes();
}

// One tensor argument of a kernel family with scratch buffers (conv2d,
// lstm): where it points, the shape it must have, its name for errors, and
// what the call does with it.
enum class ArgKind {
  input,            // must be defined
  output,           // must be defined; overlaps nothing else
  optional_input,   // may be undefined (the family says what that means)
  optional_output,  // may be undefined: not written
};

struct TensorArg {
  const Tensor* t;
  Shape shape;
  const char* name;
  ArgKind kind;
};

// A scratch buffer of such a call (a workspace, the LSTM's reserve): opaque
// to the caller, an f32 tensor of at least `elems` floats, what the
// family's sizer function (`sizer`) gives for the call's shape, dtype and
// device. Bytes are never passed where elements are meant.
struct ScratchArg {
  const Tensor* t;
  const char* name;
  int64_t elems;
  const char* sizer;
};

// Floats of an f32 scratch tensor that holds `bytes` (a library's
// workspace size): rounded up, and at least one, so the tensor is never
// empty.
inline int64_t scratch_floats(int64_t bytes) { return std::max<int64_t>(1, (bytes + 3) / 4); }

// The data tensors of one call of such a family, after the family checked
// its shape struct (described by `shape_text`): required tensors are
// defined; every defined one is on the first one's device, of one dtype
// that device takes (f32 on the CPU; f32, bf16 or f16 on CUDA) and exactly
// its shape (contiguity holds for every Tensor); no output overlaps another
// tensor. The first argument must be a required one. Returns the dtype,
// which the scratch sizes depend on.
inline DType check_kernel_tensors(const char* op, const char* family, const std::string& shape_text,
                                  std::initializer_list<TensorArg> tensors) {
  auto is_output = [](const TensorArg& a) { return a.kind == ArgKind::output || a.kind == ArgKind::optional_output; };
  auto is_required = [](const TensorArg& a) { return a.kind == ArgKind::input || a.kind == ArgKind::output; };
  const TensorArg& first = *tensors.begin();
  for (const TensorArg& a : tensors) {
    if (!is_required(a) && !a.t->defined()) continue;
    TANDEM_CHECK(a.t->defined(), std::string(op) + ": " + a.name + " is undefined");
    check_same_device(*a.t, *first.t, op);
  }
  const bool cuda = first.t->device().is_cuda();
  const DType dtype = cuda ? first.t->dtype() : DType::f32;
  if (dtype != DType::f32 && dtype != DType::bf16 && dtype != DType::f16)
    throw UserError(std::string(op) + ": " + family + " on CUDA takes f32, bf16 or f16 tensors; " + first.name +
                    " is " + dtype_name(dtype));
  for (const TensorArg& a : tensors) {
    if (!a.t->defined()) continue;
    TANDEM_CHECK(a.t->dtype() == dtype, std::string(op) + ": " + a.name + " must be " + dtype_name(dtype) +
                                            (cuda ? std::string(" as ") + first.name : std::string(" on the CPU")) +
                                            ", got " + dtype_name(a.t->dtype()));
    TANDEM_CHECK(a.t->shape() == a.shape, std::string(op) + ": " + a.name + " must be " + shape_str(a.shape) +
                                              " for " + shape_text + ", got " + shape_str(a.t->shape()));
  }
  for (const TensorArg& a : tensors) {
    if (!a.t->defined() || !is_output(a)) continue;
    for (const TensorArg& other : tensors)
      TANDEM_CHECK(&other == &a || !other.t->defined() || !overlaps(*a.t, *other.t),
                   std::string(op) + ": " + a.name + " overlaps " + other.name);
  }
  return dtype;
}

// Each scratch buffer of the call: defined, on the tensors' device, f32, at
// least its size, overlapping no tensor of the call and no other scratch.
inline void check_scratch(const char* op, std::initializer_list<TensorArg> tensors,
                          std::initializer_list<ScratchArg> scratch) {
  const Tensor& first = *tensors.begin()->t;
  for (const ScratchArg& s : scratch) {
    TANDEM_CHECK(s.t->defined(), std::string(op) + ": " + s.name + " is undefined");
    check_same_device(*s.t, first, op);
    TANDEM_CHECK(s.t->dtype() == DType::f32,
                 std::string(op) + ": " + s.name + " must be f32, got " + dtype_name(s.t->dtype()));
    TANDEM_CHECK(s.t->numel() >= s.elems, std::string(op) + ": " + s.name + " holds " + std::to_string(s.t->numel()) +
                                              " floats, needs " + std::to_string(s.elems) + " (" + s.sizer + ")");
    for (const TensorArg& a : tensors)
      TANDEM_CHECK(!a.t->defined() || !overlaps(*a.t, *s.t),
                   std::string(op) + ": " + a.name + " overlaps the " + s.name);
    for (const ScratchArg& other : scratch)
      TANDEM_CHECK(&other == &s || !other.t->defined() || !overlaps(*other.t, *s.t),
                   std::string(op) + ": " + other.name + " overlaps the " + s.name);
  }
}

inline void check_numel(const Tensor& t, int64_t n, const char* op) {
  TANDEM_CHECK(t.numel() == n, std::string(op) + ": expected " + std::to_string(n) +
                                   " elements, got " + shape_str(t.shape()));
}

}  // namespace tandem::kernels

// Calls a kernels::cuda function in a CUDA build; throws in a CPU-only one,
// where the cuda:: functions are declared but not defined.
#if TANDEM_HAS_CUDA
#define TANDEM_CUDA_ONLY(...) __VA_ARGS__
#else
// The unevaluated sizeof keeps the arguments "used" (no warnings) without
// referencing the undefined cuda:: functions at link time.
#define TANDEM_CUDA_ONLY(...) ((void)sizeof((__VA_ARGS__, 0)), ::tandem::kernels::no_cuda_build())
#endif
