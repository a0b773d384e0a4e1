// libFuzzer target: verify_checkpoint on an arbitrary manifest.json in a
// step directory that also holds one small real file (model.safetensors),
// so manifests naming it get past the "missing" check. A bad manifest must
// end in UserError; anything else that escapes is a finding.
#include <cstddef>
#include <cstdint>
#include <filesystem>

#include "runtime/checkpoint.h"
#include "runtime/core/error.h"
#include "fuzz_files.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::filesystem::path step = [] {
    auto dir = tandem::fuzz::scratch_dir() / "step_00000001";
    std::filesystem::create_directories(dir);
    const uint8_t model[] = {'t', 'a', 'n', 'd', 'e', 'm'};
    tandem::fuzz::write_file(dir / "model.safetensors", model, sizeof model);
    return dir;
  }();
  tandem::fuzz::write_file(step / "manifest.json", data, size);
  try {
    (void)tandem::verify_checkpoint(step.string());
  } catch (const tandem::UserError&) {
  }
  return 0;
}
