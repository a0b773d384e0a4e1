// libFuzzer target: read_safetensors on arbitrary bytes. A malformed file
// must end in UserError; anything else that escapes (another exception, an
// out-of-bounds read, a huge allocation) is a finding.
#include <cstddef>
#include <cstdint>

#include "runtime/core/error.h"
#include "runtime/safetensors.h"
#include "fuzz_files.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto path = tandem::fuzz::scratch_dir() / "input.safetensors";
  tandem::fuzz::write_file(path, data, size);
  try {
    tandem::SafetensorsFile file = tandem::read_safetensors(path.string());
    for (auto& [name, tensor] : file.tensors) (void)tensor.numel();
  } catch (const tandem::UserError&) {
  }
  return 0;
}
