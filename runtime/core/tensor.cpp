#include "runtime/core/tensor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstring>

#include "runtime/core/allocator.h"

#if TANDEM_HAS_CUDA
#include <cuda_runtime.h>

#include "runtime/core/cuda_check.h"
#endif

namespace tandem {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    TANDEM_CHECK(d >= 0, "negative dimension in " + shape_str(shape));
    n *= d;
  }
  return n;
}

std::string shape_str(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

Storage::Storage(Device device_, size_t bytes_)
    : device(device_), bytes(bytes_), ptr(device_alloc(device_, bytes_)) {}

Storage::~Storage() { device_free(device, ptr, bytes); }

Tensor Tensor::empty(Shape shape, DType dtype, Device device) {
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(device, t.nbytes());
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype, Device device) {
  Tensor t = empty(std::move(shape), dtype, device);
  t.zero();
  if (device.is_cuda()) Stream::default_for(device).synchronize();
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, Shape shape) {
  Tensor t = empty(std::move(shape), DType::f32, Device::cpu());
  TANDEM_CHECK(static_cast<int64_t>(values.size()) == t.numel(), "from_vector: size mismatch");
  if (t.nbytes() > 0) std::memcpy(t.data(), values.data(), t.nbytes());  // an empty vector's data() may be null
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  if (i < 0) i += n;
  TANDEM_CHECK(i >= 0 && i < n, fmt::format("dim {} of a {}-d tensor", i, n));
  return shape_[i];
}

Tensor Tensor::view(int64_t offset, Shape shape) const {
  TANDEM_CHECK(defined(), "view of an undefined tensor");
  int64_t n = shape_numel(shape);
  TANDEM_CHECK(offset >= 0 && offset + n <= numel(),
               fmt::format("view [{}, {}) outside a tensor of {} elements", offset, offset + n, numel()));
  Tensor t = *this;
  t.offset_bytes_ = offset_bytes_ + static_cast<size_t>(offset) * dtype_size(dtype_);
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::reshape(Shape shape) const {
  TANDEM_CHECK(shape_numel(shape) == numel(),
               "reshape " + shape_str(shape_) + " to " + shape_str(shape));
  return view(0, std::move(shape));
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  TANDEM_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0], "slice_rows out of range");
  int64_t row = numel() / (shape_[0] == 0 ? 1 : shape_[0]);
  Shape shape = shape_;
  shape[0] = end - begin;
  return view(begin * row, std::move(shape));
}

void Tensor::copy_from(const Tensor& src, const Stream& stream) const {
  TANDEM_CHECK(src.dtype() == dtype_ && src.numel() == numel(),
               fmt::format("copy_from: {} {} into {} {}", dtype_name(src.dtype()),
                           shape_str(src.shape()), dtype_name(dtype_), shape_str(shape_)));
  if (nbytes() == 0) return;
  if (device().is_cpu() && src.device().is_cpu()) {
    std::memcpy(data(), src.data(), nbytes());
    return;
  }
#if TANDEM_HAS_CUDA
  Device gpu = device().is_cuda() ? device() : src.device();
  set_current_device(gpu);
  CUDA_CHECK(cudaMemcpyAsync(data(), src.data(), nbytes(), cudaMemcpyDefault, stream.cuda()));
  if (device().is_cpu() || src.device().is_cpu()) CUDA_CHECK(cudaStreamSynchronize(stream.cuda()));
#else
  (void)stream;
  TANDEM_CHECK(false, "this build has no CUDA");
#endif
}

void Tensor::zero(const Stream& stream) const {
  if (nbytes() == 0) return;
  if (device().is_cpu()) {
    std::memset(data(), 0, nbytes());
    return;
  }
#if TANDEM_HAS_CUDA
  set_current_device(device());
  CUDA_CHECK(cudaMemsetAsync(data(), 0, nbytes(), stream.cuda()));
#else
  (void)stream;
#endif
}

Tensor Tensor::to(Device target) const {
  Tensor out = empty(shape_, dtype_, target);
  out.copy_from(*this);
  if (target.is_cuda()) Stream::default_for(target).synchronize();
  return out;
}

std::vector<float> Tensor::to_vector() const {
  Tensor host = device().is_cpu() ? *this : to(Device::cpu());
  std::vector<float> out(numel());
  if (dtype_ == DType::f32) {
    if (nbytes() > 0) std::memcpy(out.data(), host.data(), nbytes());  // an empty vector's data() is null
  } else if (dtype_ == DType::bf16) {
    const uint16_t* p = host.data_as<uint16_t>();
    for (size_t i = 0; i < out.size(); i++) out[i] = bf16_to_f32(p[i]);
  } else {
    TANDEM_CHECK(false, std::string("to_vector of a ") + dtype_name(dtype_) + " tensor");
  }
  return out;
}

}  // namespace tandem
