// A Tensor is a typed, shaped, contiguous view into a Storage. Views share
// their storage (a flat parameter buffer, say) and never copy; the storage
// returns to the allocator when its last view is gone.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "runtime/core/device.h"
#include "runtime/core/dtype.h"
#include "runtime/core/error.h"
#include "runtime/core/stream.h"

namespace tandem {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);  // "[2, 3]"

struct Storage {
  Storage(Device device, size_t bytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  Device device;
  size_t bytes;
  void* ptr;
};

// The C++ type that holds one element of each dtype, for data<T>() checks.
template <typename T> constexpr bool dtype_holds(DType d);
template <> constexpr bool dtype_holds<float>(DType d) { return d == DType::f32; }
template <> constexpr bool dtype_holds<int32_t>(DType d) { return d == DType::i32; }
template <> constexpr bool dtype_holds<uint16_t>(DType d) {
  return d == DType::bf16 || d == DType::f16 || d == DType::u16;
}

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(Shape shape, DType dtype, Device device);
  static Tensor zeros(Shape shape, DType dtype, Device device);
  // A CPU f32 tensor holding `values` (handy for tests and small tables).
  static Tensor from_vector(const std::vector<float>& values, Shape shape);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;  // negative i counts from the end
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device::cpu(); }

  void* data() const { return static_cast<char*>(storage_->ptr) + offset_bytes_; }
  template <typename T> T* data_as() const {
    TANDEM_CHECK(dtype_holds<T>(dtype_), std::string("tensor holds ") + dtype_name(dtype_));
    return static_cast<T*>(data());
  }

  // A view of `shape` starting `offset` elements into this tensor's data.
  Tensor view(int64_t offset, Shape shape) const;
  // The same data with another shape of the same element count.
  Tensor reshape(Shape shape) const;
  // Rows [begin, end) along the first dimension.
  Tensor slice_rows(int64_t begin, int64_t end) const;

  // Copies `src` (same dtype and element count, any device) into this tensor.
  // With a CUDA stream the copy is asynchronous on that stream.
  void copy_from(const Tensor& src, const Stream& stream = Stream()) const;
  void zero(const Stream& stream = Stream()) const;
  // A new contiguous copy on `device`. Synchronous, on the legacy default
  // stream: work queued on a non-blocking stream must be synchronized first.
  Tensor to(Device device) const;
  // The values as floats on the host (f32 and bf16 only); synchronous.
  std::vector<float> to_vector() const;

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_bytes_ = 0;
  Shape shape_;
  DType dtype_ = DType::f32;
};

}  // namespace tandem
