// Logging through fmt, each line prefixed with the level and, once known,
// the rank. Lines go to stderr so stdout stays free for results (JSON lines).
#pragma once

#include <fmt/format.h>

#include <string_view>

namespace tandem {

enum class LogLevel { debug, info, warn, error };

// Lines below this level are dropped; TANDEM_LOG_LEVEL=debug|info|warn|error.
LogLevel log_threshold();
void log_line(LogLevel level, std::string_view text);

template <typename... Args>
void log_info(fmt::format_string<Args...> format, Args&&... args) {
  if (log_threshold() <= LogLevel::info)
    log_line(LogLevel::info, fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
void log_warn(fmt::format_string<Args...> format, Args&&... args) {
  if (log_threshold() <= LogLevel::warn)
    log_line(LogLevel::warn, fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
void log_error(fmt::format_string<Args...> format, Args&&... args) {
  log_line(LogLevel::error, fmt::format(format, std::forward<Args>(args)...));
}
template <typename... Args>
void log_debug(fmt::format_string<Args...> format, Args&&... args) {
  if (log_threshold() <= LogLevel::debug)
    log_line(LogLevel::debug, fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace tandem
