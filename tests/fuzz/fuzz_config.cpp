// libFuzzer target: load_train_config on arbitrary bytes. The input is a
// TOML file, optionally followed by a NUL byte and `--set` overrides, one a
// line. A bad config must end in UserError; anything else is a finding.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/config.h"
#include "runtime/core/error.h"
#include "fuzz_files.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  size_t nul = input.find('\0');
  std::string_view toml_text = input.substr(0, nul);
  std::vector<std::string> overrides;
  if (nul != std::string_view::npos) {
    std::string_view rest = input.substr(nul + 1);
    while (!rest.empty()) {
      size_t eol = rest.find('\n');
      overrides.emplace_back(rest.substr(0, eol));
      rest = eol == std::string_view::npos ? std::string_view() : rest.substr(eol + 1);
    }
  }
  auto path = tandem::fuzz::scratch_dir() / "config.toml";
  tandem::fuzz::write_file(path, reinterpret_cast<const uint8_t*>(toml_text.data()), toml_text.size());
  try {
    tandem::TrainConfig config = tandem::load_train_config(path.string(), overrides);
    (void)tandem::to_toml(config);
  } catch (const tandem::UserError&) {
  }
  return 0;
}
