// The TCP store's server: one thread, poll() over every socket.
//
// Why one thread and poll(): the store holds a few thousand small keys and
// answers in microseconds, so one thread is fast enough, and with
// non-blocking sockets and a read buffer per connection a peer that stalls
// mid-frame, never reads its replies or sends garbage only hurts itself.
// GET of a missing key and WAIT never block that thread: the request is
// parked on its connection and answered when the keys appear or its deadline
// (the client's timeout) passes.
#include <fcntl.h>
#include <poll.h>

#include <atomic>
#include <charconv>
#include <climits>
#include <optional>
#include <thread>
#include <unordered_map>

#include "collectives/tcp_store_wire.h"
#include "runtime/core/log.h"

namespace tandem::collectives {

using namespace store_wire;

namespace {

constexpr uint32_t kMaxHelloBytes = 4096;  // a peer is a stranger until HELLO: no big buffers for it
constexpr size_t kMaxConnections = 4096;
constexpr size_t kMaxStoredBytes = size_t{1} << 30;  // keys + values
constexpr size_t kMaxPendingReply = 8u << 20;       // stop serving a peer that does not read its replies
constexpr size_t kReadBudget = 1u << 20;            // per connection and wake-up: no peer starves the rest
constexpr size_t kMaxKeysInMessage = 10;
constexpr auto kHelloTimeout = std::chrono::seconds(30);
constexpr auto kAcceptPause = std::chrono::milliseconds(100);  // after EMFILE and friends

std::string ok_frame() { return FrameWriter(Reply::ok).finish(); }
std::string value_frame(std::string_view v) { return FrameWriter(Reply::value).str(v).finish(); }
std::string bool_frame(bool b) { return FrameWriter(Reply::boolean).u8(b).finish(); }
std::string error_frame(std::string_view why) { return FrameWriter(Reply::error).str(why).finish(); }

// Whether two tokens are equal, in time that does not depend on where they differ.
bool same_token(std::string_view a, std::string_view b) {
  unsigned diff = a.size() != b.size();
  size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; i++) {
    unsigned x = i < a.size() ? static_cast<uint8_t>(a[i]) : 0, y = i < b.size() ? static_cast<uint8_t>(b[i]) : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

std::string address_text(const sockaddr* addr, socklen_t len) {
  char host[NI_MAXHOST], service[NI_MAXSERV];
  if (::getnameinfo(addr, len, host, sizeof host, service, sizeof service, NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return "?";
  return fmt::format("{}:{}", host, service);
}

Socket listen_on(const std::string& host, int port, int* bound_port) {
  if (port < 0 || port > 65535) throw UserError(fmt::format("store port {} is out of range 0..65535", port));
  std::string error = "no address";
  AddrList list = resolve(host, port, AI_PASSIVE, &error);
  for (addrinfo* a = list.get(); a; a = a->ai_next) {
    Socket s(::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol));
    int one = 1;
    if (s.fd() < 0 || ::setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        ::bind(s.fd(), a->ai_addr, a->ai_addrlen) != 0 || ::listen(s.fd(), SOMAXCONN) != 0) {
      error = errno_text(errno);
      continue;
    }
    sockaddr_storage local{};
    socklen_t len = sizeof local;
    ::getsockname(s.fd(), reinterpret_cast<sockaddr*>(&local), &len);
    *bound_port = ntohs(local.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&local)->sin6_port
                                                    : reinterpret_cast<sockaddr_in*>(&local)->sin_port);
    return s;
  }
  // No advice here: what to do about it depends on who serves (the launcher, rank 0), so the caller says.
  throw UserError(fmt::format("the store cannot listen on {}:{} ({})", host, port, error));
}

// A GET or WAIT whose keys are not all there yet.
struct Parked {
  Command command;
  std::vector<std::string> keys;  // GET: the one key
  size_t next = 0;                // filed in Impl::waiting under keys[next]; keys before it were present
  int64_t timeout_ms = 0;
  Clock::time_point deadline;
};

struct Conn {
  Socket socket;
  std::string peer;  // "ip:port", for the log
  std::string in;    // bytes received, not yet handled
  std::string out;   // reply bytes not yet sent, from out_sent on
  size_t out_sent = 0;
  bool authenticated = false;
  bool closing = false;  // close once `out` is sent (a refused HELLO)
  Clock::time_point hello_deadline;
  std::optional<Parked> parked;

  size_t pending_reply() const { return out.size() - out_sent; }
  size_t frame_limit() const { return authenticated ? kMaxFrameBytes : kMaxHelloBytes; }
};

}  // namespace

struct TcpStoreServer::Impl {
  std::string token;
  Socket listener, wake_read, wake_write;
  int port = 0;
  std::atomic<bool> stopping{false};
  std::thread thread;

  // Only the serving thread touches what follows.
  std::unordered_map<uint64_t, Conn> conns;
  uint64_t next_id = 0;
  std::unordered_map<std::string, std::string> data;
  size_t stored_bytes = 0;
  std::unordered_map<std::string, std::vector<uint64_t>> waiting;  // missing key -> parked connections
  std::vector<uint64_t> ready;  // unparked connections that may hold more frames
  Clock::time_point accept_paused_until{};
  uint64_t refused = 0;
  std::vector<char> scratch = std::vector<char>(64u << 10);

  Impl(const std::string& host, int port_arg, std::string tok) : token(std::move(tok)) {
    if (token.size() > kMaxHelloBytes / 2)  // HELLO must fit in kMaxHelloBytes
      throw UserError(fmt::format("the job token is {} bytes; the store takes at most {}", token.size(),
                                  kMaxHelloBytes / 2));
    listener = listen_on(host, port_arg, &port);
    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_NONBLOCK | O_CLOEXEC) != 0) throw Error(errno_text(errno), "pipe2", __FILE__, __LINE__);
    wake_read = Socket(pipe_fds[0]);
    wake_write = Socket(pipe_fds[1]);
    thread = std::thread([this] { serve(); });
    log_debug("store serving on {}:{}", host, port);
  }

  ~Impl() {
    stopping = true;
    char byte = 1;
    if (::write(wake_write.fd(), &byte, 1) < 0) {}  // the pipe is non-blocking and never full here
    thread.join();
  }

  void serve() {
    try {
      loop();
    } catch (const std::exception& e) {
      log_error("the store server stopped: {}", e.what());
    }
    // Parked clients hear why; everyone else sees the connection close.
    for (auto& [id, c] : conns) {
      if (!c.parked) continue;
      std::string bye = c.out.substr(c.out_sent) + error_frame("the store server is shutting down");
      if (::send(c.socket.fd(), bye.data(), bye.size(), MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {}
    }
    conns.clear();
  }

  void loop() {
    std::vector<pollfd> fds;
    std::vector<uint64_t> ids;
    while (!stopping) {
      fds.assign({{wake_read.fd(), POLLIN, 0}, {Clock::now() < accept_paused_until ? -1 : listener.fd(), POLLIN, 0}});
      ids.clear();
      for (auto& [id, c] : conns) {
        short events = c.pending_reply() ? POLLOUT : 0;
        if (!c.closing && c.pending_reply() < kMaxPendingReply && c.in.size() < c.frame_limit() + 4) events |= POLLIN;
        fds.push_back({c.socket.fd(), events, 0});
        ids.push_back(id);
      }
      if (::poll(fds.data(), fds.size(), poll_timeout()) < 0) {
        if (errno == EINTR) continue;
        throw Error(errno_text(errno), "poll", __FILE__, __LINE__);
      }
      if (stopping) break;
      if (fds[1].revents & POLLIN) accept_all();
      for (size_t i = 0; i < ids.size(); i++)
        if (fds[i + 2].revents) guarded(ids[i], [&] { on_event(ids[i], fds[i + 2].revents); });
      expire(Clock::now());
      while (!ready.empty()) {
        uint64_t id = ready.back();
        ready.pop_back();
        guarded(id, [&] { handle_frames(id); });
      }
    }
  }

  // Milliseconds until the next deadline (a parked request, a HELLO, a paused accept); -1 for none.
  int poll_timeout() const {
    Clock::time_point next = Clock::time_point::max(), now = Clock::now();
    if (now < accept_paused_until) next = accept_paused_until;
    for (const auto& [id, c] : conns) {
      if (c.parked) next = std::min(next, c.parked->deadline);
      if (!c.authenticated) next = std::min(next, c.hello_deadline);
    }
    if (next == Clock::time_point::max()) return -1;
    return static_cast<int>(std::clamp<int64_t>(std::chrono::ceil<Millis>(next - now).count(), 0, INT_MAX));
  }

  void accept_all() {
    while (true) {
      sockaddr_storage addr{};
      socklen_t len = sizeof addr;
      Socket s(::accept4(listener.fd(), reinterpret_cast<sockaddr*>(&addr), &len, SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (s.fd() < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
          // Out of descriptors: poll would report the listener again at once, so look away for a moment.
          log_warn("store: accept failed ({}); new connections wait {} ms", errno_text(errno), kAcceptPause.count());
          accept_paused_until = Clock::now() + kAcceptPause;
        }
        return;
      }
      std::string peer = address_text(reinterpret_cast<sockaddr*>(&addr), len);
      if (conns.size() >= kMaxConnections) {
        if (refused++ % 1000 == 0) log_warn("store: refusing {}: {} connections already", peer, kMaxConnections);
        std::string no = error_frame(fmt::format("the store has too many connections ({})", kMaxConnections));
        if (::send(s.fd(), no.data(), no.size(), MSG_NOSIGNAL) < 0) {}
        continue;
      }
      tune_socket(s.fd());
      Conn& c = conns[next_id++];
      c.socket = std::move(s);
      c.peer = std::move(peer);
      c.hello_deadline = Clock::now() + kHelloTimeout;
    }
  }

  void on_event(uint64_t id, short revents) {
    if (!conns.count(id)) return;  // closed earlier in this round
    // POLLHUP without POLLIN: gone while we were not reading it (parked, input full); nothing more to say.
    if ((revents & (POLLERR | POLLNVAL)) || (revents & (POLLIN | POLLHUP)) == POLLHUP) return close_conn(id);
    if ((revents & POLLIN) && !read_some(id)) return;
    if ((revents & POLLOUT) && !flush(id, conns.at(id))) return;
    handle_frames(id);
  }

  // One connection's failure (out of memory for its frame, say) costs that
  // connection, not the server.
  template <typename F>
  void guarded(uint64_t id, F&& step) {
    try {
      step();
    } catch (const std::exception& e) {
      if (conns.count(id)) drop(id, e.what());
    }
  }

  // Returns false when the connection closed.
  bool read_some(uint64_t id) {
    Conn& c = conns.at(id);
    size_t budget = kReadBudget, cap = c.frame_limit() + 4;
    while (budget > 0 && c.in.size() < cap) {
      ssize_t n = ::recv(c.socket.fd(), scratch.data(), std::min({scratch.size(), budget, cap - c.in.size()}), 0);
      if (n > 0) {
        c.in.append(scratch.data(), n);
        budget -= n;
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        break;
      } else {
        close_conn(id);  // the peer left (or reset): not a protocol violation
        return false;
      }
    }
    return true;
  }

  void handle_frames(uint64_t id) {
    auto it = conns.find(id);
    if (it == conns.end()) return;
    Conn& c = it->second;
    size_t pos = 0;
    while (!c.parked && !c.closing && c.pending_reply() < kMaxPendingReply && c.in.size() - pos >= 4) {
      uint32_t len = static_cast<uint32_t>(read_le(c.in.data() + pos, 4));
      if (len == 0 || len > c.frame_limit()) {
        drop(id, fmt::format("a frame of {} bytes (limit {})", len, c.frame_limit()));
        return;
      }
      if (c.in.size() - pos - 4 < len) break;
      std::string_view frame(c.in.data() + pos + 4, len);
      pos += 4 + len;
      if (!handle(id, c, frame)) return;  // closed: `c` is gone
    }
    c.in.erase(0, pos);
  }

  // One request. Returns false when the connection closed.
  bool handle(uint64_t id, Conn& c, std::string_view frame) {
    FrameReader r(frame);
    auto command = static_cast<Command>(r.u8());
    if (!c.authenticated) return command == Command::hello ? hello(id, c, r) : drop(id, "a request before HELLO");
    switch (command) {
      case Command::set: {
        std::string key(r.str());
        std::string_view value = r.str();
        return r.complete() ? reply(id, c, set(std::move(key), value)) : malformed(id);
      }
      case Command::get: {
        std::vector<std::string> keys{std::string(r.str())};
        int64_t timeout_ms = r.i64();
        return r.complete() ? park(id, c, {Command::get, std::move(keys), 0, timeout_ms, {}}) : malformed(id);
      }
      case Command::add: {
        std::string key(r.str());
        int64_t delta = r.i64();
        return r.complete() ? reply(id, c, add(std::move(key), delta)) : malformed(id);
      }
      case Command::wait: {
        std::vector<std::string> keys = r.keys();
        int64_t timeout_ms = r.i64();
        return r.complete() ? park(id, c, {Command::wait, std::move(keys), 0, timeout_ms, {}}) : malformed(id);
      }
      case Command::compare_set: {
        std::string key(r.str());
        std::string_view expected = r.str(), desired = r.str();
        return r.complete() ? reply(id, c, compare_set(std::move(key), expected, desired)) : malformed(id);
      }
      case Command::remove: {
        std::string key(r.str());
        return r.complete() ? reply(id, c, remove(key)) : malformed(id);
      }
      case Command::check: {
        std::vector<std::string> keys = r.keys();
        return r.complete() ? reply(id, c, bool_frame(first_missing(keys) == keys.size())) : malformed(id);
      }
      default:
        return drop(id, fmt::format("unknown command {}", static_cast<int>(command)));
    }
  }

  bool hello(uint64_t id, Conn& c, FrameReader& r) {
    std::string_view presented = r.str();
    uint32_t version = r.u32();
    if (!r.complete()) return malformed(id);
    if (!same_token(presented, token)) {
      log_warn("store: {} presented a bad token; closing it", c.peer);
      c.closing = true;
      return reply(id, c, error_frame("bad token"));
    }
    if (version != kProtocolVersion) {
      c.closing = true;
      return reply(id, c, error_frame(fmt::format("protocol version {}, the server speaks {}", version,
                                                  kProtocolVersion)));
    }
    c.authenticated = true;
    return reply(id, c, ok_frame());
  }

  // ---- the commands

  bool fits(const std::string& key, size_t value_bytes) const {
    auto it = data.find(key);
    size_t old = it == data.end() ? 0 : key.size() + it->second.size();
    return stored_bytes - old + key.size() + value_bytes <= kMaxStoredBytes;
  }

  std::string full(const std::string& key) const {
    return error_frame(fmt::format("the store is full ({} MiB of keys and values); '{}' was not written",
                                   kMaxStoredBytes >> 20, key));
  }

  void put(const std::string& key, std::string value) {
    auto [it, created] = data.try_emplace(key);
    stored_bytes += value.size() + (created ? key.size() : 0);
    stored_bytes -= it->second.size();
    it->second = std::move(value);
    notify(key);
  }

  std::string set(std::string key, std::string_view value) {
    if (!fits(key, value.size())) return full(key);
    put(key, std::string(value));
    return ok_frame();
  }

  std::string add(std::string key, int64_t delta) {
    int64_t value = 0;
    if (auto it = data.find(key); it != data.end()) {
      const std::string& s = it->second;
      auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
      if (ec != std::errc() || end != s.data() + s.size())
        return error_frame(fmt::format("ADD: the value of '{}' is not an integer", key));
    }
    if (__builtin_add_overflow(value, delta, &value)) return error_frame(fmt::format("ADD: '{}' overflows", key));
    std::string text = std::to_string(value);
    if (!fits(key, text.size())) return full(key);
    put(key, std::move(text));
    return FrameWriter(Reply::integer).i64(value).finish();
  }

  std::string compare_set(std::string key, std::string_view expected, std::string_view desired) {
    auto it = data.find(key);
    bool match = it == data.end() ? expected.empty() : it->second == expected;
    if (!match) return value_frame(it == data.end() ? std::string_view() : std::string_view(it->second));
    if (!fits(key, desired.size())) return full(key);
    put(key, std::string(desired));
    return value_frame(desired);
  }

  std::string remove(const std::string& key) {
    auto it = data.find(key);
    if (it == data.end()) return bool_frame(false);
    stored_bytes -= key.size() + it->second.size();
    data.erase(it);
    return bool_frame(true);
  }

  size_t first_missing(const std::vector<std::string>& keys, size_t from = 0) const {
    while (from < keys.size() && data.count(keys[from])) from++;
    return from;
  }

  // ---- parked requests

  bool park(uint64_t id, Conn& c, Parked p) {
    p.deadline = Clock::now() + Millis(std::clamp<int64_t>(p.timeout_ms, 0, Millis(kMaxWait).count()));
    c.parked = std::move(p);
    return advance(id, c);
  }

  // Answers c's parked request if all its keys exist; otherwise files it
  // under the first missing one (so a waiter sits in one list only).
  // Returns false when the connection closed.
  bool advance(uint64_t id, Conn& c) {
    Parked& p = *c.parked;
    p.next = first_missing(p.keys, p.next);
    if (p.next == p.keys.size()) p.next = first_missing(p.keys);  // an earlier key may have been removed since
    if (p.next < p.keys.size()) {
      waiting[p.keys[p.next]].push_back(id);
      return true;
    }
    std::string answer = p.command == Command::get ? value_frame(data.at(p.keys[0])) : ok_frame();
    c.parked.reset();
    ready.push_back(id);
    return reply(id, c, std::move(answer));
  }

  void notify(const std::string& key) {
    auto it = waiting.find(key);
    if (it == waiting.end()) return;
    std::vector<uint64_t> ids = std::move(it->second);
    waiting.erase(it);
    for (uint64_t id : ids)
      if (auto c = conns.find(id); c != conns.end() && c->second.parked) advance(id, c->second);
  }

  void unfile(uint64_t id, const Parked& p) {
    auto it = waiting.find(p.keys[p.next]);
    if (it == waiting.end()) return;
    std::erase(it->second, id);
    if (it->second.empty()) waiting.erase(it);
  }

  void expire(Clock::time_point now) {
    std::vector<uint64_t> due;
    for (const auto& [id, c] : conns)
      if ((c.parked && c.parked->deadline <= now) || (!c.authenticated && c.hello_deadline <= now)) due.push_back(id);
    for (uint64_t id : due) {
      auto it = conns.find(id);
      if (it == conns.end()) continue;
      Conn& c = it->second;
      if (!c.authenticated) {
        c.closing ? close_conn(id) : (void)drop(id, "no HELLO in time");
        continue;
      }
      unfile(id, *c.parked);
      std::string why = timeout_message(*c.parked);
      c.parked.reset();
      ready.push_back(id);
      reply(id, c, FrameWriter(Reply::timeout).str(why).finish());
    }
  }

  std::string timeout_message(const Parked& p) const {
    std::string missing;
    size_t count = 0;
    for (const std::string& k : p.keys)
      if (!data.count(k) && count++ < kMaxKeysInMessage) missing += (missing.empty() ? "" : ", ") + k;
    if (count > kMaxKeysInMessage) missing += fmt::format(" and {} more", count - kMaxKeysInMessage);
    return fmt::format("store wait timed out after {} ms; missing keys: {}", p.timeout_ms, missing);
  }

  // ---- sending and closing

  bool reply(uint64_t id, Conn& c, std::string frame) {
    c.out.append(frame);
    return flush(id, c);
  }

  // Sends what the socket takes now. Returns false when the connection closed.
  bool flush(uint64_t id, Conn& c) {
    while (c.out_sent < c.out.size()) {
      ssize_t n = ::send(c.socket.fd(), c.out.data() + c.out_sent, c.out.size() - c.out_sent, MSG_NOSIGNAL);
      if (n > 0) {
        c.out_sent += n;
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return true;
      } else {
        close_conn(id);
        return false;
      }
    }
    c.out.clear();
    c.out_sent = 0;
    if (!c.closing) return true;
    close_conn(id);
    return false;
  }

  bool malformed(uint64_t id) {
    return drop(id, "a malformed frame (a field overruns it, bytes are left over, or too many keys)");
  }

  // A protocol violation: one warning, then the connection goes; the others carry on.
  bool drop(uint64_t id, const std::string& why) {
    log_warn("store: closing the connection from {}: {}", conns.at(id).peer, why);
    close_conn(id);
    return false;
  }

  void close_conn(uint64_t id) {
    auto it = conns.find(id);
    if (it == conns.end()) return;
    if (it->second.parked) unfile(id, *it->second.parked);
    conns.erase(it);
  }
};

TcpStoreServer::TcpStoreServer(const std::string& host, int port, std::string token)
    : impl_(std::make_unique<Impl>(host, port, std::move(token))) {}

TcpStoreServer::~TcpStoreServer() = default;

int TcpStoreServer::port() const { return impl_->port; }

}  // namespace tandem::collectives
