#include "runtime/module.h"

namespace tandem {

Tensor& ensure_buffer(Tensor& buffer, const Shape& shape, DType dtype, Device device) {
  if (!buffer.defined() || buffer.shape() != shape || buffer.dtype() != dtype || buffer.device() != device)
    buffer = Tensor::empty(shape, dtype, device);
  return buffer;
}

}  // namespace tandem
