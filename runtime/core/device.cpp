#include "runtime/core/device.h"

#include <fmt/format.h>

#include <charconv>

#include "runtime/core/error.h"

namespace tandem {

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : fmt::format("cuda:{}", index);
}

Device parse_device(std::string_view text) {
  if (text == "cpu") return Device::cpu();
  if (text == "cuda") return Device::cuda(0);
  if (text.starts_with("cuda:")) {
    std::string_view digits = text.substr(5);
    int index = -1;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    if (ec == std::errc() && end == digits.data() + digits.size() && index >= 0)
      return Device::cuda(index);
  }
  throw UserError(fmt::format("unknown device '{}' (expected cpu, cuda, cuda:N or auto)", text));
}

Device resolve_device(std::string_view text) {
  if (text == "auto") return cuda_device_count() > 0 ? Device::cuda(0) : Device::cpu();
  return parse_device(text);
}

void require_cuda(const char* what) {
  if (!cuda_built())
    throw UserError(fmt::format("{} needs CUDA, but this build has none (rebuild with -DTANDEM_CUDA=ON)", what));
  if (cuda_device_count() == 0)
    throw UserError(fmt::format("{} needs a CUDA GPU, but none is visible", what));
}

}  // namespace tandem
