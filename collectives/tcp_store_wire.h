// The TCP store's wire format and the socket plumbing its server
// (tcp_store_server.cpp) and client (tcp_store.cpp) share.
#pragma once

#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "collectives/tcp_store.h"
#include "runtime/core/error.h"

namespace tandem::collectives::store_wire {

using Clock = std::chrono::steady_clock;

// Note [Store wire format]
// Requests (u8 command, then fields; str = u32 length + bytes; integers are
// little-endian) and their replies:
//   HELLO        str token, u32 version            OK | ERROR, then closed
//   SET          str key, str value                OK | ERROR (store full)
//   GET          str key, i64 timeout_ms           VALUE str | TIMEOUT str
//   ADD          str key, i64 delta                INT i64 | ERROR (not an integer)
//   WAIT         u32 n, n x str key, i64 timeout_ms  OK | TIMEOUT str
//   COMPARE_SET  str key, str expected, str desired  VALUE str (held afterwards)
//   DELETE       str key                           BOOL u8
//   CHECK        u32 n, n x str key                BOOL u8
// ADD keeps its integer as decimal text, as MemoryStore does, so GET reads
// it back the same way from both. The server handles one request of a
// connection at a time: frames behind a parked GET/WAIT wait for its reply,
// so replies come back in request order.
enum class Command : uint8_t { hello = 1, set, get, add, wait, compare_set, remove, check };
enum class Reply : uint8_t { ok = 0x80, value, integer, boolean, timeout, error };

constexpr uint32_t kProtocolVersion = 1;
constexpr uint32_t kMaxKeysPerRequest = 1u << 16;  // WAIT, CHECK
constexpr auto kMaxWait = std::chrono::hours(24 * 7);  // longer timeouts are clamped to this

inline std::string errno_text(int e) { return std::error_code(e, std::generic_category()).message(); }

[[noreturn]] inline void too_large(size_t bytes) {
  throw Error(fmt::format("a store request of {} bytes exceeds the {} MiB frame limit", bytes, kMaxFrameBytes >> 20),
              "TcpStore", __FILE__, __LINE__);
}

class FrameWriter {
 public:
  explicit FrameWriter(uint8_t type) : buf_(4, '\0') { buf_.push_back(static_cast<char>(type)); }
  explicit FrameWriter(Command c) : FrameWriter(static_cast<uint8_t>(c)) {}
  explicit FrameWriter(Reply r) : FrameWriter(static_cast<uint8_t>(r)) {}
  FrameWriter& u8(uint8_t v) { return put(v, 1); }
  FrameWriter& u32(uint32_t v) { return put(v, 4); }
  FrameWriter& i64(int64_t v) { return put(static_cast<uint64_t>(v), 8); }
  FrameWriter& str(std::string_view s) {
    if (s.size() > kMaxFrameBytes) too_large(s.size());
    u32(static_cast<uint32_t>(s.size()));
    buf_.append(s);
    return *this;
  }
  // The frame with its length in front.
  std::string finish() {
    if (buf_.size() - 4 > kMaxFrameBytes) too_large(buf_.size() - 4);
    for (int i = 0; i < 4; i++) buf_[i] = static_cast<char>((buf_.size() - 4) >> (8 * i));
    return std::move(buf_);
  }

 private:
  FrameWriter& put(uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) buf_.push_back(static_cast<char>(v >> (8 * i)));
    return *this;
  }
  std::string buf_;
};

inline uint64_t read_le(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; i++) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

// Reads a frame's fields; a field that runs past the end turns ok() false
// (and every later read returns empty) instead of reading out of bounds.
class FrameReader {
 public:
  explicit FrameReader(std::string_view payload) : rest_(payload) {}
  uint8_t u8() { return static_cast<uint8_t>(number(1)); }
  uint32_t u32() { return static_cast<uint32_t>(number(4)); }
  int64_t i64() { return static_cast<int64_t>(number(8)); }
  std::string_view str() { return take(u32()); }
  // `u32 n` then n keys; fails on more than kMaxKeysPerRequest.
  std::vector<std::string> keys() {
    uint32_t n = u32();
    if (n > kMaxKeysPerRequest) ok_ = false;
    std::vector<std::string> out;
    for (uint32_t i = 0; i < n && ok_; i++) out.emplace_back(str());
    return out;
  }
  bool ok() const { return ok_; }
  // Every field was there and nothing is left over.
  bool complete() const { return ok_ && rest_.empty(); }

 private:
  uint64_t number(int bytes) {
    std::string_view b = take(bytes);
    return ok_ ? read_le(b.data(), bytes) : 0;
  }
  std::string_view take(size_t n) {
    if (!ok_ || rest_.size() < n) {
      ok_ = false;
      return {};
    }
    std::string_view out = rest_.substr(0, n);
    rest_.remove_prefix(n);
    return out;
  }
  std::string_view rest_;
  bool ok_ = true;
};

class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  Socket(Socket&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Socket& operator=(Socket&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~Socket() { reset(); }
  int fd() const { return fd_; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// No Nagle delay on small requests; keepalive notices a peer whose host
// vanished during a long WAIT within about a minute.
inline void tune_socket(int fd) {
  int one = 1, idle = 30, interval = 10, count = 3;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
}

using AddrList = std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)>;

// host:port as socket addresses; an empty list and `*error` when it does not resolve.
inline AddrList resolve(const std::string& host, int port, int flags, std::string* error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = flags | AI_NUMERICSERV;
  addrinfo* list = nullptr;
  std::string service = std::to_string(port);
  int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &list);
  if (rc != 0) *error = rc == EAI_SYSTEM ? errno_text(errno) : ::gai_strerror(rc);
  return AddrList(rc == 0 ? list : nullptr, &::freeaddrinfo);
}

// Timeouts in milliseconds within [0, kMaxWait]: Millis::max() means "a long time", not an overflow.
inline int64_t clamp_wait(Millis t) { return std::clamp<int64_t>(t.count(), 0, Millis(kMaxWait).count()); }

}  // namespace tandem::collectives::store_wire
