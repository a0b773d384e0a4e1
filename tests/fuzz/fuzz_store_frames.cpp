// libFuzzer target: the TCP store server's request parser, over a real
// socket. One server lives for the whole run; each input is one connection.
// Input: byte 0 is a flag (bit 0: send a valid HELLO first, so the fuzzer
// reaches the commands; otherwise the input must get past HELLO itself),
// the rest is the raw byte stream sent to the server. The connection's
// write side is then shut and replies are read until the server closes it
// or goes quiet for kQuiet. Malformed input must only close that
// connection: a crash, a sanitizer report or a server that stops answering
// (the HELLO probe after each input) is a finding. The same bytes also go
// through FrameReader directly.
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "collectives/tcp_store.h"
#include "collectives/tcp_store_wire.h"

namespace {

namespace wire = tandem::collectives::store_wire;

constexpr const char* kToken = "fuzz-token";
constexpr int kQuietMs = 20;        // a parked GET/WAIT answers no sooner: move on
constexpr int kProbeMs = 5000;      // a live server answers HELLO well within this

tandem::collectives::TcpStoreServer& server() {
  static tandem::collectives::TcpStoreServer s("127.0.0.1", 0, kToken);
  return s;
}

wire::Socket configured(wire::Socket s);

wire::Socket connect_to_server() {
  std::string error;
  auto addrs = wire::resolve("127.0.0.1", server().port(), 0, &error);
  if (!addrs) std::abort();
  // A signal (libFuzzer's timers) can interrupt connect(): start over with a
  // fresh socket then, as the interrupted one is in an unknown state.
  for (int attempt = 0;; attempt++) {
    wire::Socket s(::socket(addrs->ai_family, SOCK_STREAM, 0));
    if (s.fd() >= 0 && ::connect(s.fd(), addrs->ai_addr, addrs->ai_addrlen) == 0) return configured(std::move(s));
    if (s.fd() < 0 || errno != EINTR || attempt >= 100) {
      std::fprintf(stderr, "fuzz_store_frames: cannot connect to the server: %s\n", std::strerror(errno));
      std::abort();
    }
  }
}

// Closed with a reset, not into TIME_WAIT: thousands of connections a
// second would otherwise run out of ephemeral ports.
wire::Socket configured(wire::Socket s) {
  linger reset{1, 0};
  ::setsockopt(s.fd(), SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
  return s;
}

std::string hello_frame() {
  return wire::FrameWriter(wire::Command::hello).str(kToken).u32(wire::kProtocolVersion).finish();
}

void send_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the server closed it: fine
    bytes.remove_prefix(static_cast<size_t>(n));
  }
}

// Reads until EOF, an error, `quiet_ms` without data or `enough` bytes; returns the bytes read.
// libFuzzer's timer signal interrupts poll() and recv(): that is not quiet, so wait on.
std::string drain(int fd, int quiet_ms, size_t enough = SIZE_MAX) {
  std::string got;
  char buf[4096];
  while (got.size() < enough) {
    pollfd p{fd, POLLIN, 0};
    int ready = ::poll(&p, 1, quiet_ms);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return got;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return got;
    got.append(buf, static_cast<size_t>(n));
  }
  return got;
}

// The raw bytes through FrameReader, as the server reads a frame.
void read_fields(std::string_view bytes) {
  wire::FrameReader r(bytes);
  while (r.ok() && !r.complete()) {
    switch (r.u8() % 5) {
      case 0: (void)r.u32(); break;
      case 1: (void)r.i64(); break;
      case 2: (void)r.str(); break;
      case 3: (void)r.keys(); break;
      default: (void)r.u8(); break;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view stream(reinterpret_cast<const char*>(data) + 1, size - 1);
  read_fields(stream);
  {
    wire::Socket s = connect_to_server();
    if (data[0] & 1) send_all(s.fd(), hello_frame());
    send_all(s.fd(), stream);
    ::shutdown(s.fd(), SHUT_WR);
    (void)drain(s.fd(), kQuietMs);
  }
  // The server still serves others: a fresh connection's HELLO gets OK.
  wire::Socket probe = connect_to_server();
  send_all(probe.fd(), hello_frame());
  constexpr size_t kOkFrameBytes = 5;  // u32 length 1, then Reply::ok
  std::string reply = drain(probe.fd(), kProbeMs, kOkFrameBytes);
  if (reply.size() < kOkFrameBytes || static_cast<uint8_t>(reply[4]) != static_cast<uint8_t>(wire::Reply::ok)) {
    std::fprintf(stderr, "fuzz_store_frames: the server did not answer a fresh HELLO with OK (%zu bytes back)\n",
                 reply.size());
    std::abort();
  }
  return 0;
}
