// Where a tensor lives: the host, or one CUDA device.
#pragma once

#include <string>
#include <string_view>

namespace tandem {

struct Device {
  enum class Kind { cpu, cuda };
  Kind kind = Kind::cpu;
  int index = 0;

  static Device cpu() { return {Kind::cpu, 0}; }
  static Device cuda(int index = 0) { return {Kind::cuda, index}; }
  bool is_cpu() const { return kind == Kind::cpu; }
  bool is_cuda() const { return kind == Kind::cuda; }
  bool operator==(const Device&) const = default;
  std::string str() const;  // "cpu", "cuda:0"
};

// Parses "cpu", "cuda", "cuda:N"; throws UserError otherwise.
Device parse_device(std::string_view text);

// Like parse_device, plus "auto": the first GPU when one is usable, else cpu.
Device resolve_device(std::string_view text);

// True when tandem was built with CUDA (TANDEM_CUDA on).
bool cuda_built();
// Number of usable CUDA devices; 0 without a build or a GPU (never throws).
int cuda_device_count();
// Throws UserError naming `what` unless a CUDA device is usable.
void require_cuda(const char* what);

}  // namespace tandem
