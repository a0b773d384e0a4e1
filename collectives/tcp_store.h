// The TCP store: a server that holds the keys and a client per process.
//
// Protocol (little-endian): every message is a frame
//   u32 length, then `length` bytes: u8 command, then the command's fields,
//   each string/bytes field as u32 length + bytes.
// The first frame of a connection must be HELLO with the job token; a
// connection that sends anything else, a wrong token, a frame longer than
// kMaxFrameBytes or a malformed frame is closed, and the server keeps
// serving every other connection.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "collectives/store.h"

namespace tandem::collectives {

constexpr uint32_t kMaxFrameBytes = 64u << 20;  // 64 MiB: far above any rendezvous value

class TcpStoreServer {
 public:
  // Listens on `host:port` (port 0 picks a free one) and serves on its own
  // thread until destroyed. Connections must present `token`.
  TcpStoreServer(const std::string& host, int port, std::string token);
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

  int port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Connects to a server, retrying until `connect_timeout` (the server may
// start after its clients), and authenticates with `token`. Throws
// UserError when the server is unreachable or refuses the token.
std::shared_ptr<Store> connect_tcp_store(const std::string& host, int port, const std::string& token,
                                         Millis connect_timeout);

// A fresh random job token (hex), as the launcher generates.
std::string generate_job_token();

}  // namespace tandem::collectives
