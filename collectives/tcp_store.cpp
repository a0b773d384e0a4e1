// The TCP store's client (a small pool of authenticated connections) and
// the job token. The server is in tcp_store_server.cpp, the wire format in
// tcp_store_wire.h (Note [Store wire format]).
#include <poll.h>
#include <sys/random.h>

#include <climits>
#include <cstring>
#include <mutex>
#include <thread>

#include "collectives/tcp_store_wire.h"

namespace tandem::collectives {

using namespace store_wire;


namespace {

constexpr size_t kMaxIdleConnections = 4;
constexpr Millis kReplyMargin{5000};  // beyond a GET/WAIT's own timeout, at most
constexpr Millis kReconnectTimeout{10000};  // at most
constexpr auto kConnectAttempt = std::chrono::seconds(5);
constexpr auto kFirstRetryPause = std::chrono::milliseconds(10);
constexpr auto kMaxRetryPause = std::chrono::milliseconds(500);

struct Endpoint {
  std::string host;
  int port;
  std::string token;
  std::string where() const { return fmt::format("{}:{}", host, port); }
};

[[noreturn]] void connection_failed(const Endpoint& ep, const std::string& what, const char* call) {
  throw Error(fmt::format("the store connection to {} failed: {}", ep.where(), what), call, __FILE__, __LINE__);
}

// When a request's reply is due, and how long that gave it (for the message).
struct ReplyBy {
  Clock::time_point at;
  Millis allowed;
  static ReplyBy from_now(Millis allowed) { return {Clock::now() + allowed, allowed}; }
};

[[noreturn]] void no_reply(const Endpoint& ep, const ReplyBy& by, const char* call) {
  throw StoreReplyTimeout(ep.where(), by.allowed, call, __FILE__, __LINE__);
}

// Waits until `fd` is ready for `events`; false once `deadline` passed.
bool wait_ready(int fd, short events, Clock::time_point deadline) {
  while (true) {
    int64_t left = std::chrono::ceil<Millis>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, INT_MAX)));
    if (n > 0 || (n < 0 && errno != EINTR)) return true;  // the next call reports any error
  }
}

void send_all(const Endpoint& ep, int fd, std::string_view data, const ReplyBy& by) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data.remove_prefix(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!wait_ready(fd, POLLOUT, by.at)) no_reply(ep, by, "send");
    } else if (!(n < 0 && errno == EINTR)) {
      connection_failed(ep, errno_text(errno), "send");
    }
  }
}

void recv_exact(const Endpoint& ep, int fd, char* p, size_t n, const ReplyBy& by) {
  while (n > 0) {
    ssize_t got = ::recv(fd, p, n, 0);
    if (got > 0) {
      p += got;
      n -= got;
    } else if (got == 0) {
      connection_failed(ep, "the server closed the connection", "recv");
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!wait_ready(fd, POLLIN, by.at)) no_reply(ep, by, "recv");
    } else if (errno != EINTR) {
      connection_failed(ep, errno_text(errno), "recv");
    }
  }
}

std::string recv_frame(const Endpoint& ep, int fd, const ReplyBy& by) {
  char header[4];
  recv_exact(ep, fd, header, 4, by);
  uint32_t len = static_cast<uint32_t>(read_le(header, 4));
  if (len == 0 || len > kMaxFrameBytes) connection_failed(ep, fmt::format("a reply of {} bytes", len), "recv");
  std::string frame(len, '\0');
  recv_exact(ep, fd, frame.data(), len, by);
  return frame;
}

// A connection on loopback to a port nobody listens on can connect to
// itself (TCP simultaneous open); that is no server.
bool connected_to_itself(int fd) {
  sockaddr_storage a{}, b{};
  socklen_t la = sizeof a, lb = sizeof b;
  return ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &la) == 0 &&
         ::getpeername(fd, reinterpret_cast<sockaddr*>(&b), &lb) == 0 && la == lb && std::memcmp(&a, &b, la) == 0;
}

Socket try_connect(const addrinfo* a, Clock::time_point deadline, std::string* error) {
  Socket s(::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol));
  if (s.fd() < 0) {
    *error = errno_text(errno);
    return {};
  }
  if (::connect(s.fd(), a->ai_addr, a->ai_addrlen) != 0) {
    if (errno != EINPROGRESS) {
      *error = errno_text(errno);
      return {};
    }
    auto left = std::clamp<Clock::duration>(deadline - Clock::now(), Millis(100), kConnectAttempt);
    int err = ETIMEDOUT;
    socklen_t len = sizeof err;
    if (wait_ready(s.fd(), POLLOUT, Clock::now() + left)) ::getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      *error = errno_text(err);
      return {};
    }
  }
  if (connected_to_itself(s.fd())) {
    *error = errno_text(ECONNREFUSED);
    return {};
  }
  tune_socket(s.fd());
  return s;
}

// A TCP connection to `ep`, retried with backoff until `deadline`: the
// server may start after its clients.
Socket dial(const Endpoint& ep, Clock::time_point deadline) {
  Millis pause = kFirstRetryPause;
  while (true) {
    std::string error = "no address";
    AddrList list = resolve(ep.host, ep.port, 0, &error);
    for (addrinfo* a = list.get(); a; a = a->ai_next)
      if (Socket s = try_connect(a, deadline, &error); s.fd() >= 0) return s;
    Clock::duration left = deadline - Clock::now();
    if (left <= Clock::duration::zero())
      throw UserError(fmt::format("cannot reach the store at {} ({}); is the master at {} up? check MASTER_ADDR and "
                                  "MASTER_PORT",
                                  ep.where(), error, ep.where()));
    std::this_thread::sleep_for(std::min<Clock::duration>(pause, left));
    pause = std::min(pause * 2, kMaxRetryPause);
  }
}

// A connection that passed the token handshake (answered within `reply_timeout`).
Socket open_session(const Endpoint& ep, Clock::time_point deadline, Millis reply_timeout) {
  Socket s = dial(ep, deadline);
  ReplyBy reply_by = ReplyBy::from_now(reply_timeout);
  std::string answer;
  try {
    send_all(ep, s.fd(), FrameWriter(Command::hello).str(ep.token).u32(kProtocolVersion).finish(), reply_by);
    answer = recv_frame(ep, s.fd(), reply_by);
  } catch (const StoreReplyTimeout& e) {
    throw UserError(fmt::format("the store at {} accepted the connection but did not answer the handshake within "
                                "{:.1f} s; is its process stopped, or is it not a tandem store?",
                                ep.where(), e.waited().count() / 1000.0));
  } catch (const Error& e) {
    throw UserError(fmt::format("the store at {} did not complete the handshake ({}); is it a tandem store?",
                                ep.where(), e.what()));
  }
  FrameReader r(answer);
  auto type = static_cast<Reply>(r.u8());
  if (type == Reply::ok && r.complete()) return s;
  std::string why = type == Reply::error ? std::string(r.str()) : "an unexpected answer";
  if (why == "bad token")
    throw UserError(fmt::format("the store at {} refused this job token; check TANDEM_JOB_TOKEN (every process of a "
                                "job must use the same token: the one its launcher generated, or the one exported "
                                "on every rank of a job started by hand)",
                                ep.where()));
  throw UserError(fmt::format("the store at {} refused the connection: {}", ep.where(), why));
}

class TcpStore final : public Store {
 public:
  TcpStore(Endpoint ep, const TcpStoreOptions& options, Socket first)
      : ep_(std::move(ep)),
        reply_timeout_(options.reply_timeout),
        reply_margin_(std::min(options.reply_timeout, kReplyMargin)),
        reconnect_timeout_(std::min({options.connect_timeout, options.reply_timeout, kReconnectTimeout})) {
    idle_.push_back(std::move(first));
  }

  void set(const std::string& key, const Bytes& value) override {
    std::string answer = call(FrameWriter(Command::set).str(key).str(view(value)).finish(), reply_timeout_);
    done(open(answer, Reply::ok));
  }

  Bytes get(const std::string& key, Millis timeout) override {
    std::string answer = call(FrameWriter(Command::get).str(key).i64(clamp_wait(timeout)).finish(), budget(timeout));
    FrameReader r = open(answer, Reply::value);
    std::string_view value = r.str();
    done(r);
    return Bytes(value.begin(), value.end());
  }

  int64_t add(const std::string& key, int64_t delta) override {
    std::string answer = call(FrameWriter(Command::add).str(key).i64(delta).finish(), reply_timeout_);
    FrameReader r = open(answer, Reply::integer);
    int64_t value = r.i64();
    done(r);
    return value;
  }

  void wait(const std::vector<std::string>& keys, Millis timeout) override {
    FrameWriter request(Command::wait);
    put_keys(request, keys).i64(clamp_wait(timeout));
    std::string answer = call(request.finish(), budget(timeout));
    done(open(answer, Reply::ok));
  }

  Bytes compare_set(const std::string& key, const Bytes& expected, const Bytes& desired) override {
    FrameWriter request(Command::compare_set);
    request.str(key).str(view(expected)).str(view(desired));
    std::string answer = call(request.finish(), reply_timeout_);
    FrameReader r = open(answer, Reply::value);
    std::string_view value = r.str();
    done(r);
    return Bytes(value.begin(), value.end());
  }

  bool remove(const std::string& key) override {
    std::string answer = call(FrameWriter(Command::remove).str(key).finish(), reply_timeout_);
    return boolean(answer);
  }

  bool check(const std::vector<std::string>& keys) override {
    FrameWriter request(Command::check);
    std::string answer = call(put_keys(request, keys).finish(), reply_timeout_);
    return boolean(answer);
  }

 private:
  static std::string_view view(const Bytes& b) { return {b.data(), b.size()}; }
  Millis budget(Millis timeout) const { return Millis(clamp_wait(timeout)) + reply_margin_; }

  FrameWriter& put_keys(FrameWriter& w, const std::vector<std::string>& keys) const {
    if (keys.size() > kMaxKeysPerRequest)
      throw Error(fmt::format("{} keys in one store request; the limit is {}", keys.size(), kMaxKeysPerRequest),
                  "TcpStore", __FILE__, __LINE__);
    w.u32(static_cast<uint32_t>(keys.size()));
    for (const std::string& k : keys) w.str(k);
    return w;
  }

  // One round trip on a connection of its own, so a thread parked in a
  // WAIT never holds up another thread's SET. A connection that failed
  // mid-request is closed, never reused: its stream may be out of step.
  std::string call(const std::string& request, Millis reply_timeout) {
    Socket s = acquire();
    ReplyBy by = ReplyBy::from_now(reply_timeout);
    send_all(ep_, s.fd(), request, by);
    std::string answer = recv_frame(ep_, s.fd(), by);
    std::lock_guard<std::mutex> lock(mutex_);
    if (idle_.size() < kMaxIdleConnections) idle_.push_back(std::move(s));
    return answer;
  }

  Socket acquire() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!idle_.empty()) {
        Socket s = std::move(idle_.back());
        idle_.pop_back();
        return s;
      }
    }
    return open_session(ep_, Clock::now() + reconnect_timeout_, reply_timeout_);
  }

  // A reader past the reply's type byte; TIMEOUT and ERROR replies throw.
  FrameReader open(const std::string& answer, Reply want) const {
    FrameReader r(answer);
    auto type = static_cast<Reply>(r.u8());
    if (type == want) return r;
    std::string why(type == Reply::timeout || type == Reply::error ? r.str() : "an unexpected reply");
    if (type == Reply::timeout) throw StoreTimeout(why);
    throw Error(fmt::format("the store at {} refused the request: {}", ep_.where(), why), "TcpStore", __FILE__,
                __LINE__);
  }

  void done(const FrameReader& r) const {
    if (!r.complete()) connection_failed(ep_, "a malformed reply", "recv");
  }

  bool boolean(const std::string& answer) const {
    FrameReader r = open(answer, Reply::boolean);
    bool b = r.u8() != 0;
    done(r);
    return b;
  }

  Endpoint ep_;
  Millis reply_timeout_;      // TcpStoreOptions::reply_timeout
  Millis reply_margin_;       // past a GET's or WAIT's own timeout
  Millis reconnect_timeout_;  // for connections after the first: a server that went away fails fast
  std::mutex mutex_;
  std::vector<Socket> idle_;
};

}  // namespace

StoreReplyTimeout::StoreReplyTimeout(const std::string& where, Millis waited, const char* call, const char* file,
                                     int line)
    : Error(fmt::format("the store at {} did not answer within {:.1f} s", where, waited.count() / 1000.0), call,
            file, line),
      waited_(waited) {}

std::shared_ptr<Store> connect_tcp_store(const std::string& host, int port, const std::string& token,
                                         const TcpStoreOptions& options) {
  TANDEM_CHECK(options.reply_timeout > Millis(0), "a store reply timeout must be positive");
  Endpoint ep{host, port, token};
  Socket first =
      open_session(ep, Clock::now() + Millis(clamp_wait(options.connect_timeout)), options.reply_timeout);
  return std::make_shared<TcpStore>(std::move(ep), options, std::move(first));
}

std::shared_ptr<Store> connect_tcp_store(const std::string& host, int port, const std::string& token,
                                         Millis connect_timeout) {
  return connect_tcp_store(host, port, token, TcpStoreOptions{.connect_timeout = connect_timeout});
}

std::string generate_job_token() {
  unsigned char bytes[32];
  size_t got = 0;
  while (got < sizeof bytes) {
    ssize_t n = ::getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0 && errno != EINTR) throw Error(errno_text(errno), "getrandom", __FILE__, __LINE__);
    if (n > 0) got += n;
  }
  std::string hex;
  for (unsigned char b : bytes) hex += fmt::format("{:02x}", b);
  return hex;
}

}  // namespace tandem::collectives
