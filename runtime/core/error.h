// Typed errors. Every failure carries the call that failed, file:line and the
// rank, so a multi-rank log says at once who failed where.
//
// Two kinds of failure, kept apart on purpose (STYLE.md, habit 6):
// - UserError: the user gave us something wrong (config, data file,
//   checkpoint). main prints its one line and exits non-zero.
// - everything else: a library call failed or an internal invariant broke.
//   TANDEM_CHECK is never compiled out.
#pragma once

#include <stdexcept>
#include <string>

namespace tandem {

// The rank this process reports in errors and logs; -1 until set_rank.
int current_rank();
void set_rank(int rank);

class Error : public std::runtime_error {
 public:
  Error(const std::string& what, const char* call, const char* file, int line);
  const std::string& call() const { return call_; }
  const std::string& file() const { return file_; }
  int line() const { return line_; }
  int rank() const { return rank_; }

 private:
  std::string call_, file_;
  int line_, rank_;
};

// A failed CUDA, cuBLAS, cuDNN or NCCL call; `code` is the library's status.
class LibraryError : public Error {
 public:
  LibraryError(const char* library, int code, const std::string& message, const char* call,
               const char* file, int line);
  const std::string& library() const { return library_; }
  int code() const { return code_; }

 private:
  std::string library_;
  int code_;
};

// Bad input from the user: a config key, a data file, a checkpoint.
class UserError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void throw_check_failure(const char* cond, const std::string& msg, const char* file,
                                      int line);
[[noreturn]] void throw_library_error(const char* library, int code, const char* message,
                                      const char* call, const char* file, int line);

}  // namespace tandem

// Internal invariant; never compiled out. The message is only built on failure.
#define TANDEM_CHECK(cond, ...)                                                         \
  do {                                                                                  \
    if (!(cond)) ::tandem::throw_check_failure(#cond, ::std::string(__VA_ARGS__), __FILE__, \
                                               __LINE__);                               \
  } while (0)
