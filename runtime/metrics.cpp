#include "runtime/metrics.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>

#include "runtime/core/error.h"

namespace tandem {

MetricsLog::MetricsLog(const std::string& path) {
  if (path.empty()) return;
  std::filesystem::path p(path);
  if (p.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(p.parent_path(), ec);
  }
  out_.open(path, std::ios::trunc);
  if (!out_) throw UserError(fmt::format("cannot write metrics file {}", path));
}

void MetricsLog::write(const nlohmann::json& record) {
  if (!out_.is_open()) return;
  out_ << record.dump() << "\n";
  out_.flush();  // a killed run keeps every line it logged
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02d}s", s / 60, s % 60);
  return fmt::format("{}h{:02d}m", s / 3600, (s % 3600) / 60);
}

}  // namespace tandem
