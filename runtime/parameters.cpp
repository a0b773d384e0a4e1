#include "runtime/parameters.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "kernels/cast.h"
#include "runtime/core/philox.h"

namespace tandem {

namespace {

// Parameters start at multiples of this many elements: 16-byte aligned
// views in bf16 and f32, which vectorized kernels and cuBLASLt prefer.
constexpr int64_t kParamAlignElems = 8;

// A per-parameter Philox key, so adding a parameter does not shift the
// values of the others.
uint64_t init_key(uint64_t seed, size_t index) { return seed * 0x9E3779B97F4A7C15ull + index + 1; }

}  // namespace

Parameter* ParameterSet::add(std::string name, Shape shape, Init init, bool transposed_in_file) {
  TANDEM_CHECK(!transposed_in_file || shape.size() == 2, "only 2-D parameters are transposed in files: " + name);
  TANDEM_CHECK(!allocated(), "ParameterSet::add after allocate: " + name);
  for (const Parameter& p : params_) TANDEM_CHECK(p.name != name, "duplicate parameter " + name);
  Parameter& p = params_.emplace_back();
  p.name = std::move(name);
  p.shape = std::move(shape);
  p.init = init;
  p.transposed_in_file = transposed_in_file;
  p.offset = numel_;
  numel_ += (p.numel() + kParamAlignElems - 1) / kParamAlignElems * kParamAlignElems;
  return &p;
}

Parameter* ParameterSet::add_buffer(std::string name, Shape shape, Init init) {
  TANDEM_CHECK(!allocated(), "ParameterSet::add_buffer after allocate: " + name);
  TANDEM_CHECK(init.kind == Init::Kind::zeros || init.kind == Init::Kind::ones, "buffers start as zeros or ones: " + name);
  for (const Parameter& b : buffers_) TANDEM_CHECK(b.name != name, "duplicate buffer " + name);
  Parameter& b = buffers_.emplace_back();
  b.name = std::move(name);
  b.shape = std::move(shape);
  b.init = init;
  b.offset = buffer_numel_;
  buffer_numel_ += b.numel();
  return &b;
}

void ParameterSet::set_initial_values(Tensor values) {
  TANDEM_CHECK(values.dtype() == DType::f32 && values.device().is_cpu() && values.numel() == numel_,
               "set_initial_values: expected f32 CPU values of " + std::to_string(numel_) + " elements");
  pretrained_ = std::move(values);
}

Tensor ParameterSet::initial_values(uint64_t seed) const {
  if (pretrained_.defined()) return pretrained_;
  Tensor out = Tensor::zeros({numel_}, DType::f32, Device::cpu());
  float* host = out.data_as<float>();
  for (size_t index = 0; index < params_.size(); index++) {
    const Parameter& p = params_[index];
    float* dst = host + p.offset;
    uint64_t key = init_key(seed, index);
    for (int64_t i = 0; i < p.numel(); i++) {
      switch (p.init.kind) {
        case Init::Kind::zeros: dst[i] = 0.f; break;
        case Init::Kind::ones: dst[i] = 1.f; break;
        case Init::Kind::uniform: dst[i] = p.init.scale * (2.f * philox_uniform(key, i) - 1.f); break;
        case Init::Kind::normal: dst[i] = p.init.scale * philox_normal(key, i); break;
      }
    }
  }
  return out;
}

void ParameterSet::allocate(Device device, DType dtype, const Tensor& initial) {
  TANDEM_CHECK(initial.dtype() == DType::f32 && initial.numel() == numel_, "initial values: " +
                                                                               shape_str(initial.shape()));
  TANDEM_CHECK(!allocated(), "ParameterSet::allocate twice");
  values_ = Tensor::empty({numel_}, dtype, device);
  grads_ = Tensor::zeros({numel_}, dtype, device);
  for (Parameter& p : params_) {
    p.value = values_.view(p.offset, p.shape);
    p.grad = grads_.view(p.offset, p.shape);
  }
  if (buffer_numel_ > 0) {
    Tensor host = Tensor::zeros({buffer_numel_}, DType::f32, Device::cpu());
    for (const Parameter& b : buffers_)
      if (b.init.kind == Init::Kind::ones) std::fill_n(host.data_as<float>() + b.offset, b.numel(), 1.f);
    buffer_values_ = device.is_cpu() ? host : host.to(device);
    for (Parameter& b : buffers_) b.value = buffer_values_.view(b.offset, b.shape);
  }
  if (dtype == DType::f32) {
    values_.copy_from(initial);
    if (device.is_cuda()) Stream::default_for(device).synchronize();
  } else {
    Tensor staged = initial.device() == device ? initial : initial.to(device);
    Stream stream = Stream::default_for(device);
    kernels::cast(values_, staged, stream);
    stream.synchronize();
  }
}

const Parameter& ParameterSet::find(const std::string& name) const {
  for (const Parameter& p : params_)
    if (p.name == name) return p;
  TANDEM_CHECK(false, "no parameter named " + name);
}

namespace {

Shape file_shape(const Parameter& p) { return p.transposed_in_file ? Shape{p.shape[1], p.shape[0]} : p.shape; }

// dst (cols, rows) = src (rows, cols) transposed.
void transpose(float* dst, const float* src, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) dst[c * rows + r] = src[r * cols + c];
}

}  // namespace

Tensor to_file_layout(const Parameter& p, const Tensor& value) {
  if (!p.transposed_in_file) return value;
  Tensor host = value.device().is_cpu() ? value : value.to(Device::cpu());
  Tensor out = Tensor::empty(file_shape(p), DType::f32, Device::cpu());
  transpose(out.data_as<float>(), host.data_as<float>(), p.shape[0], p.shape[1]);
  return out;
}

void from_file_layout(const Parameter& p, const Tensor& file_tensor, float* dst, const std::string& where) {
  Shape expected = file_shape(p);
  if (file_tensor.shape() != expected || (file_tensor.dtype() != DType::f32 && file_tensor.dtype() != DType::bf16))
    throw UserError(fmt::format("{}: '{}' is {} {}, the model has f32 {}", where, p.name,
                                dtype_name(file_tensor.dtype()), shape_str(file_tensor.shape()), shape_str(expected)));
  std::vector<float> values(p.numel());
  if (file_tensor.dtype() == DType::bf16)
    kernels::cpu::cast_bf16_to_f32(values.data(), file_tensor.data_as<uint16_t>(), p.numel());
  else
    std::memcpy(values.data(), file_tensor.data(), p.numel() * sizeof(float));
  if (p.transposed_in_file)
    transpose(dst, values.data(), expected[0], expected[1]);
  else
    std::memcpy(dst, values.data(), p.numel() * sizeof(float));
}

}  // namespace tandem
