#include "runtime/core/error.h"

#include <fmt/format.h>

#include <atomic>

namespace tandem {

static std::atomic<int> g_rank{-1};

int current_rank() { return g_rank.load(); }
void set_rank(int rank) { g_rank.store(rank); }

static std::string where(const char* call, const char* file, int line) {
  return fmt::format("{} at {}:{} (rank {})", call, file, line, current_rank());
}

Error::Error(const std::string& what, const char* call, const char* file, int line)
    : std::runtime_error(what + ": " + where(call, file, line)),
      call_(call),
      file_(file),
      line_(line),
      rank_(current_rank()) {}

LibraryError::LibraryError(const char* library, int code, const std::string& message,
                           const char* call, const char* file, int line)
    : Error(fmt::format("{} error {} ({})", library, code, message), call, file, line),
      library_(library),
      code_(code) {}

void throw_check_failure(const char* cond, const std::string& msg, const char* file, int line) {
  std::string what = msg.empty() ? "check failed" : "check failed: " + msg;
  throw Error(what, cond, file, line);
}

void throw_library_error(const char* library, int code, const char* message, const char* call,
                         const char* file, int line) {
  throw LibraryError(library, code, message ? message : "", call, file, line);
}

}  // namespace tandem
