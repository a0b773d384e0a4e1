// The safetensors format (Hugging Face): an 8-byte little-endian header
// length, a JSON header mapping each tensor name to its dtype, shape and
// byte range, then the raw data. PyTorch users load it with
// safetensors.torch.load_file.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "runtime/core/tensor.h"

namespace tandem {

struct NamedTensor {
  std::string name;
  Tensor tensor;  // any device; written in its own dtype
};

// Writes `tensors` (in order) and the string `metadata` to `path`.
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;  // CPU tensors
  std::map<std::string, std::string> metadata;
};

// Reads a whole file. Throws UserError naming the file and the problem for
// anything malformed: a header too large or not JSON, an unknown dtype, a
// byte range outside the data or not matching its shape.
SafetensorsFile read_safetensors(const std::string& path);

}  // namespace tandem
