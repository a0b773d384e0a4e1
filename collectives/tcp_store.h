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
#include "runtime/core/error.h"

namespace tandem::collectives {

constexpr uint32_t kMaxFrameBytes = 64u << 20;  // 64 MiB: far above any rendezvous value
constexpr Millis kDefaultReplyTimeout{60000};    // see TcpStoreOptions::reply_timeout

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

struct TcpStoreOptions {
  // How long the first connection is retried (the server may start after
  // its clients); 0 makes one attempt.
  Millis connect_timeout{0};
  // How long a request may go unanswered before the client gives up on the
  // server (StoreReplyTimeout): the whole round trip of a request that does
  // not wait, the handshake, a later reconnect (at most 10 s either way),
  // and the margin past a GET's or WAIT's own timeout (at most 5 s). A
  // server or a network that stopped is noticed within this.
  Millis reply_timeout = kDefaultReplyTimeout;
};

// A request the server did not answer within the client's reply timeout;
// its connection is closed (never reused).
class StoreReplyTimeout : public Error {
 public:
  StoreReplyTimeout(const std::string& where, Millis waited, const char* call, const char* file, int line);
  Millis waited() const { return waited_; }

 private:
  Millis waited_;
};

// Connects to a server, retrying until `options.connect_timeout`, and
// authenticates with `token`. Throws UserError when the server is
// unreachable or refuses the token.
std::shared_ptr<Store> connect_tcp_store(const std::string& host, int port, const std::string& token,
                                         const TcpStoreOptions& options);
// The same with the default reply timeout.
std::shared_ptr<Store> connect_tcp_store(const std::string& host, int port, const std::string& token,
                                         Millis connect_timeout);

// A fresh random job token (hex), as the launcher generates.
std::string generate_job_token();

}  // namespace tandem::collectives
