#include "runtime/core/log.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "runtime/core/error.h"

namespace tandem {

LogLevel log_threshold() {
  static const LogLevel level = [] {
    const char* env = std::getenv("TANDEM_LOG_LEVEL");
    if (!env) return LogLevel::info;
    if (!std::strcmp(env, "debug")) return LogLevel::debug;
    if (!std::strcmp(env, "warn")) return LogLevel::warn;
    if (!std::strcmp(env, "error")) return LogLevel::error;
    return LogLevel::info;
  }();
  return level;
}

void log_line(LogLevel level, std::string_view text) {
  static const char* names[] = {"debug", "info", "warn", "error"};
  static std::mutex mutex;  // whole lines, even from several threads
  std::lock_guard<std::mutex> lock(mutex);
  int rank = current_rank();
  if (rank >= 0)
    fmt::print(stderr, "[tandem {} rank {}] {}\n", names[static_cast<int>(level)], rank, text);
  else
    fmt::print(stderr, "[tandem {}] {}\n", names[static_cast<int>(level)], text);
  std::fflush(stderr);
}

}  // namespace tandem
