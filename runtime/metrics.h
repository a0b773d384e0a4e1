// Training metrics: one JSON object per line in --metrics-out, and a
// human progress line on stderr.
#pragma once

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace tandem {

class MetricsLog {
 public:
  // An empty path writes nothing.
  explicit MetricsLog(const std::string& path);
  void write(const nlohmann::json& record);

 private:
  std::ofstream out_;
};

// "1m05s", "42s", "2h03m"
std::string format_duration(double seconds);

}  // namespace tandem
