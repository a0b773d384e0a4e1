#include "runtime/parameters.h"

#include <fmt/format.h>

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

Parameter* ParameterSet::add(std::string name, Shape shape, Init init) {
  TANDEM_CHECK(!allocated(), "ParameterSet::add after allocate: " + name);
  for (const Parameter& p : params_) TANDEM_CHECK(p.name != name, "duplicate parameter " + name);
  Parameter& p = params_.emplace_back();
  p.name = std::move(name);
  p.shape = std::move(shape);
  p.init = init;
  p.offset = numel_;
  numel_ += (p.numel() + kParamAlignElems - 1) / kParamAlignElems * kParamAlignElems;
  return &p;
}

Tensor ParameterSet::initial_values(uint64_t seed) const {
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

}  // namespace tandem
