// The Python interpreter that cross-checks tandem against PyTorch and
// transformers, when this machine has one.
#pragma once

#include <cstdlib>
#include <optional>
#include <string>

#include "support/process.h"

namespace tandem::testing {

// An interpreter command that imports every module in `modules` ("torch,
// transformers"): TANDEM_PYTHON when set (a command, e.g. "env
// PYTHONPATH=/opt/hf python3"), else Debian's python3 (where tools/setup.sh
// installs python3-torch), else the python3 on PATH; none: nullopt.
inline std::optional<std::string> python_with(const std::string& modules) {
  std::vector<std::string> candidates = {"/usr/bin/python3", "python3"};
  if (const char* chosen = std::getenv("TANDEM_PYTHON")) candidates = {chosen};
  for (const std::string& python : candidates)
    if (run_shell(python + " -c 'import " + modules + "' >/dev/null 2>&1").exit_code == 0) return python;
  return std::nullopt;
}

}  // namespace tandem::testing
