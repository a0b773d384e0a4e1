// The Store contract, run against every implementation: MemoryStore, a
// TcpStore on a loopback server, and a PrefixStore over each. Then what
// only the TCP store has: the token, hostile peers, many connections,
// shutdown. Every wait here is short and bounded: no test can hang.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <thread>

#include "collectives/tcp_store.h"
#include "runtime/core/error.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::collectives;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

constexpr Millis kLong = 2000ms;  // a wait that should succeed well before this
constexpr Millis kConnect = 2000ms;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// One store, and a way to open another handle on it (what a second rank
// would hold: the same object in memory, a new connection over TCP).
struct Harness {
  std::string kind;
  std::unique_ptr<TcpStoreServer> server;
  std::shared_ptr<Store> memory;
  std::string token = generate_job_token();

  explicit Harness(std::string k) : kind(std::move(k)) {
    if (kind.find("tcp") != std::string::npos)
      server = std::make_unique<TcpStoreServer>("127.0.0.1", 0, token);
    else
      memory = make_memory_store();
  }

  std::shared_ptr<Store> open() {
    std::shared_ptr<Store> base = server ? connect_tcp_store("127.0.0.1", server->port(), token, kConnect) : memory;
    return kind.rfind("prefix", 0) == 0 ? make_prefix_store("pg0", base) : base;
  }
};

Harness any_store() { return Harness(GENERATE(as<std::string>{}, "memory", "tcp", "prefix-memory", "prefix-tcp")); }

}  // namespace

TEST_CASE("store: set then get, overwrite", "[store]") {
  Harness h = any_store();
  INFO(h.kind);
  auto s = h.open();
  s->set("a", to_bytes("1"));
  REQUIRE(to_string(s->get("a", kLong)) == "1");
  s->set("a", to_bytes("two"));
  REQUIRE(to_string(s->get("a", kLong)) == "two");
  REQUIRE(to_string(h.open()->get("a", kLong)) == "two");
}

TEST_CASE("store: get waits for a set from another thread", "[store]") {
  Harness h = any_store();
  INFO(h.kind);
  auto reader = h.open(), writer = h.open();
  auto later = std::async(std::launch::async, [&] {
    std::this_thread::sleep_for(50ms);
    writer->set("late", to_bytes("here"));
  });
  REQUIRE(to_string(reader->get("late", kLong)) == "here");
  later.get();
}

TEST_CASE("store: get of a missing key times out in time, naming it", "[store]") {
  Harness h = any_store();
  INFO(h.kind);
  auto s = h.open();
  auto start = Clock::now();
  try {
    s->get("never", 150ms);
    FAIL("get did not time out");
  } catch (const StoreTimeout& e) {
    REQUIRE(std::string(e.what()).find("never") != std::string::npos);
  }
  double took = seconds_since(start);
  REQUIRE(took >= 0.14);
  REQUIRE(took <= 0.30);
  // The handle still works after a timeout.
  s->set("after", to_bytes("ok"));
  REQUIRE(to_string(s->get("after", kLong)) == "ok");
}

TEST_CASE("store: add from 8 threads x 100 ends at 800, kept as decimal text", "[store]") {
  Harness h = any_store();
  INFO(h.kind);
  auto shared = h.open();
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; t++)
    threads.emplace_back([&] {
      for (int i = 0; i < 100; i++) shared->add("counter", 1);
    });
  for (auto& t : threads) t.join();
  REQUIRE(shared->add("counter", 0) == 800);
  REQUIRE(to_string(h.open()->get("counter", kLong)) == "800");
  shared->set("n", to_bytes("41"));
  REQUIRE(shared->add("n", 1) == 42);
  REQUIRE(shared->add("n", -50) == -8);
  REQUIRE(to_string(shared->get("n", kLong)) == "-8");
}

TEST_CASE("store: wait for several keys", "[store]") {
  Harness h = any_store();
  INFO(h.kind);
  auto waiter = h.open(), writer = h.open();
  auto later = std::async(std::launch::async, [&] {
    for (const char* k : {"k0", "k1", "k2"}) {
      std::this_thread::sleep_for(20ms);
      writer->set(k, to_bytes(k));
    }
  });
  waiter->wait({"k0", "k1", "k2"}, kLong);
  later.get();
  waiter->wait({}, 10ms);
  auto start = Clock::now();
  try {
    waiter->wait({"k1", "nope"}, 100ms);
    FAIL("wait did not time out");
  } catch (const StoreTimeout& e) {
    std::string what = e.what();
    REQUIRE(what.find("nope") != std::string::npos);
    REQUIRE(what.find("k1") == std::string::npos);
  }
  REQUIRE(seconds_since(start) <= 0.25);
}

TEST_CASE("store: compare_set", "[store]") {
  Harness h = any_store();
  INFO(h.kind);
  auto s = h.open();
  // Absent and expected empty: sets.
  REQUIRE(to_string(s->compare_set("c", {}, to_bytes("v1"))) == "v1");
  // Absent and expected non-empty: nothing set, returns empty.
  REQUIRE(s->compare_set("d", to_bytes("x"), to_bytes("y")).empty());
  REQUIRE_FALSE(s->check({"d"}));
  // Mismatch: returns the current value, leaves it.
  REQUIRE(to_string(s->compare_set("c", to_bytes("other"), to_bytes("v2"))) == "v1");
  REQUIRE(to_string(s->get("c", kLong)) == "v1");
  // Match: swaps.
  REQUIRE(to_string(s->compare_set("c", to_bytes("v1"), to_bytes("v2"))) == "v2");
  REQUIRE(to_string(s->get("c", kLong)) == "v2");
}

TEST_CASE("store: remove and check", "[store]") {
  Harness h = any_store();
  INFO(h.kind);
  auto s = h.open();
  s->set("r", to_bytes("1"));
  s->set("q", to_bytes("2"));
  REQUIRE(s->check({"r", "q"}));
  REQUIRE(s->check({}));
  REQUIRE(s->remove("r"));
  REQUIRE_FALSE(s->remove("r"));
  REQUIRE_FALSE(s->check({"r", "q"}));
  REQUIRE(s->check({"q"}));
  REQUIRE_THROWS_AS(s->get("r", 20ms), StoreTimeout);
  // A removed key can come back, and a waiter sees it.
  auto later = std::async(std::launch::async, [&] {
    std::this_thread::sleep_for(20ms);
    h.open()->set("r", to_bytes("3"));
  });
  REQUIRE(to_string(s->get("r", kLong)) == "3");
  later.get();
}

TEST_CASE("store: binary, empty and 1 MiB values", "[store]") {
  Harness h = any_store();
  INFO(h.kind);
  auto s = h.open();
  Bytes binary;
  for (int i = 0; i < 256; i++) binary.push_back(static_cast<char>(i));
  binary.insert(binary.end(), {'\0', '\0', 'x', '\0'});
  s->set(std::string("key\0with nul", 12), binary);
  REQUIRE(s->get(std::string("key\0with nul", 12), kLong) == binary);
  REQUIRE_FALSE(s->check({"key"}));

  s->set("empty", {});
  REQUIRE(s->check({"empty"}));
  REQUIRE(s->get("empty", kLong).empty());

  Bytes big(1 << 20);
  std::mt19937 gen(testing::fresh_seed());
  for (char& c : big) c = static_cast<char>(gen());
  s->set("big", big);
  REQUIRE(h.open()->get("big", kLong) == big);
}

// ---------------------------------------------------------------- TCP only

namespace {

// What tcp_store.cpp's Note [Store wire format] says; spelled out again here
// so a change to the format has to change this test too.
constexpr uint8_t kHello = 1, kSet = 2, kWait = 5, kUnknown = 99;  // commands
constexpr char kOk = static_cast<char>(0x80);                        // a reply
constexpr uint32_t kVersion = 1;

// A frame's length header (u32, little-endian).
std::string header(uint32_t length) {
  std::string out;
  for (int i = 0; i < 4; i++) out.push_back(static_cast<char>(length >> (8 * i)));
  return out;
}

struct Frame {
  std::string bytes;
  explicit Frame(uint8_t command) { bytes.push_back(static_cast<char>(command)); }
  Frame& u32(uint32_t v) {
    for (int i = 0; i < 4; i++) bytes.push_back(static_cast<char>(v >> (8 * i)));
    return *this;
  }
  Frame& i64(int64_t v) {
    for (int i = 0; i < 8; i++) bytes.push_back(static_cast<char>(static_cast<uint64_t>(v) >> (8 * i)));
    return *this;
  }
  Frame& str(const std::string& s) {
    u32(static_cast<uint32_t>(s.size()));
    bytes += s;
    return *this;
  }
  std::string wire() const { return header(static_cast<uint32_t>(bytes.size())) + bytes; }
};

// A plain TCP socket to the server, with a receive timeout so a test that
// waits for the server to close it cannot hang.
struct RawPeer {
  int fd = -1;
  explicit RawPeer(int port) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    timeval tv{2, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  }
  ~RawPeer() { ::close(fd); }
  void send(const std::string& bytes) { REQUIRE(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) >= 0); }
  // One reply frame's payload; empty if none came.
  std::string read_reply() {
    auto exact = [&](size_t n) {
      std::string out(n, '\0');
      for (size_t got = 0; got < n;) {
        ssize_t k = ::recv(fd, out.data() + got, n - got, 0);
        if (k <= 0) return std::string();
        got += k;
      }
      return out;
    };
    std::string header = exact(4);
    if (header.size() != 4) return {};
    uint32_t len = 0;
    for (int i = 0; i < 4; i++) len |= static_cast<uint32_t>(static_cast<uint8_t>(header[i])) << (8 * i);
    return exact(len);
  }
  // True when the server closes the connection within the receive timeout.
  bool closed_by_server() {
    char buf[256];
    while (true) {
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n == 0 || (n < 0 && errno == ECONNRESET)) return true;
      if (n < 0) return false;  // timed out: still open
    }
  }
};

void require_works(Store& s, const std::string& key) {
  s.set(key, to_bytes(key));
  REQUIRE(to_string(s.get(key, kLong)) == key);
}

}  // namespace

TEST_CASE("tcp store: a wrong token is a UserError that says what to check", "[store][tcp]") {
  TcpStoreServer server("127.0.0.1", 0, generate_job_token());
  try {
    connect_tcp_store("127.0.0.1", server.port(), "not-the-token", kConnect);
    FAIL("a wrong token was accepted");
  } catch (const UserError& e) {
    REQUIRE(std::string(e.what()).find("TANDEM_JOB_TOKEN") != std::string::npos);
  }
}

TEST_CASE("tcp store: hostile peers are disconnected, everyone else is served", "[store][tcp]") {
  std::string token = generate_job_token();
  TcpStoreServer server("127.0.0.1", 0, token);
  auto before = connect_tcp_store("127.0.0.1", server.port(), token, kConnect);
  std::string hello = Frame(kHello).str(token).u32(kVersion).wire();
  struct Case {
    const char* name;
    std::string bytes;
    bool authenticate;
  };
  std::vector<Case> cases = {
      {"garbage", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", false},
      {"a 2 GiB frame header", header(0x80000000u) + "xxxx", false},
      {"a field longer than its frame", header(5) + Frame(kHello).u32(1000).bytes, false},
      {"a frame cut short by EOF", Frame(kHello).str(token).wire().substr(0, 10), false},
      {"a valid SET before HELLO", Frame(kSet).str("k").str("v").wire(), false},
      {"a bad token", Frame(kHello).str("wrong").u32(kVersion).wire(), false},
      {"an unknown command", Frame(kUnknown).wire(), true},
      {"a frame over kMaxFrameBytes", header(kMaxFrameBytes + 1), true},
      {"a WAIT for 2^20 keys", Frame(kWait).u32(1u << 20).i64(0).wire(), true},
      {"a SET with bytes left over", Frame(kSet).str("k").str("v").u32(7).wire(), true},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    auto start = Clock::now();
    RawPeer peer(server.port());
    if (c.authenticate) peer.send(hello);
    peer.send(c.bytes);
    if (std::string(c.name) == "a frame cut short by EOF") ::shutdown(peer.fd, SHUT_WR);
    REQUIRE(peer.closed_by_server());
    REQUIRE(seconds_since(start) < 1.0);
    require_works(*before, fmt::format("before/{}", c.name));
    auto after = connect_tcp_store("127.0.0.1", server.port(), token, kConnect);
    require_works(*after, fmt::format("after/{}", c.name));
  }
}

TEST_CASE("tcp store: requests behind a parked WAIT are answered after it, in order", "[store][tcp]") {
  std::string token = generate_job_token();
  TcpStoreServer server("127.0.0.1", 0, token);
  RawPeer peer(server.port());
  peer.send(Frame(kHello).str(token).u32(kVersion).wire() + Frame(kWait).u32(1).str("gate").i64(2000).wire() +
            Frame(kSet).str("behind").str("1").wire());
  REQUIRE(peer.read_reply() == std::string(1, kOk));  // HELLO
  auto other = connect_tcp_store("127.0.0.1", server.port(), token, kConnect);
  std::this_thread::sleep_for(20ms);
  REQUIRE_FALSE(other->check({"behind"}));  // still queued behind the WAIT
  other->set("gate", to_bytes("open"));
  REQUIRE(peer.read_reply() == std::string(1, kOk));  // the WAIT
  REQUIRE(peer.read_reply() == std::string(1, kOk));  // the SET
  REQUIRE(other->check({"behind"}));
}

TEST_CASE("tcp store: a peer stalled mid-frame blocks no one", "[store][tcp]") {
  std::string token = generate_job_token();
  TcpStoreServer server("127.0.0.1", 0, token);
  RawPeer stalled(server.port());
  stalled.send(Frame(kHello).str(token).u32(kVersion).wire());
  stalled.send(std::string("\x40\0\0\0\x02", 5));  // a SET of 64 bytes, 1 byte of it sent
  RawPeer silent(server.port());                     // connected, never says a word
  auto s = connect_tcp_store("127.0.0.1", server.port(), token, kConnect);
  auto start = Clock::now();
  for (int i = 0; i < 20; i++) require_works(*s, fmt::format("k{}", i));
  REQUIRE(seconds_since(start) < 0.5);
}

TEST_CASE("tcp store: 32 clients, each on its own connection, at once", "[store][tcp]") {
  std::string token = generate_job_token();
  TcpStoreServer server("127.0.0.1", 0, token);
  constexpr int kClients = 32, kKeys = 20;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kClients; t++)
    threads.emplace_back([&, t] {
      try {
        auto s = connect_tcp_store("127.0.0.1", server.port(), token, kConnect);
        for (int i = 0; i < kKeys; i++) s->set(fmt::format("{}/{}", t, i), to_bytes(std::to_string(t * i)));
        // Read a neighbour's keys: they may still be on their way.
        int other = (t + 1) % kClients;
        for (int i = 0; i < kKeys; i++)
          if (to_string(s->get(fmt::format("{}/{}", other, i), kLong)) != std::to_string(other * i)) failures++;
        s->add("done", 1);
      } catch (...) {
        failures++;
      }
    });
  for (auto& t : threads) t.join();
  REQUIRE(failures == 0);
  REQUIRE(connect_tcp_store("127.0.0.1", server.port(), token, kConnect)->add("done", 0) == kClients);
}

TEST_CASE("tcp store: past 4096 connections a new one is refused cleanly", "[store][tcp]") {
  constexpr int kLimit = 4096;  // tcp_store.cpp's kMaxConnections
  rlimit files{};
  ::getrlimit(RLIMIT_NOFILE, &files);
  if (files.rlim_cur < 3 * kLimit && files.rlim_max >= 3 * kLimit) {
    files.rlim_cur = 3 * kLimit;
    ::setrlimit(RLIMIT_NOFILE, &files);
  }
  if (files.rlim_cur < 3 * kLimit) {
    WARN("SKIPPED: needs " << 3 * kLimit << " file descriptors, has " << files.rlim_cur);
    return;
  }
  std::string token = generate_job_token();
  TcpStoreServer server("127.0.0.1", 0, token);
  auto before = connect_tcp_store("127.0.0.1", server.port(), token, kConnect);
  std::vector<std::unique_ptr<RawPeer>> crowd;
  for (int i = 1; i < kLimit; i++) crowd.push_back(std::make_unique<RawPeer>(server.port()));
  try {
    connect_tcp_store("127.0.0.1", server.port(), token, kConnect);
    FAIL("connection 4097 was accepted");
  } catch (const UserError& e) {
    REQUIRE(std::string(e.what()).find("too many connections") != std::string::npos);
  }
  require_works(*before, "crowded");
  crowd.clear();
  // The server sees the crowd leave a moment later.
  std::shared_ptr<Store> after;
  for (auto start = Clock::now(); !after && seconds_since(start) < 2.0;) {
    try {
      after = connect_tcp_store("127.0.0.1", server.port(), token, kConnect);
    } catch (const UserError&) {
      std::this_thread::sleep_for(20ms);
    }
  }
  REQUIRE(after);
  require_works(*after, "after the crowd");
}

TEST_CASE("tcp store: one handle, a parked wait does not hold up another thread's set", "[store][tcp]") {
  std::string token = generate_job_token();
  TcpStoreServer server("127.0.0.1", 0, token);
  auto s = connect_tcp_store("127.0.0.1", server.port(), token, kConnect);
  auto waiting = std::async(std::launch::async, [&] { s->wait({"go"}, kLong); });
  std::this_thread::sleep_for(30ms);
  auto start = Clock::now();
  s->set("go", to_bytes("1"));
  waiting.get();
  REQUIRE(seconds_since(start) < 0.5);
}

TEST_CASE("tcp store: the server may start after its client", "[store][tcp]") {
  std::string token = generate_job_token();
  int port = TcpStoreServer("127.0.0.1", 0, token).port();  // a port that was free a moment ago
  auto client = std::async(std::launch::async, [&] { return connect_tcp_store("127.0.0.1", port, token, 3000ms); });
  std::this_thread::sleep_for(200ms);
  TcpStoreServer server("127.0.0.1", port, token);
  auto s = client.get();
  require_works(*s, "late-server");
}

TEST_CASE("tcp store: nobody listening is a UserError after connect_timeout", "[store][tcp]") {
  int port = TcpStoreServer("127.0.0.1", 0, "t").port();
  auto start = Clock::now();
  try {
    connect_tcp_store("127.0.0.1", port, "t", 300ms);
    FAIL("connected to nothing");
  } catch (const UserError& e) {
    REQUIRE(std::string(e.what()).find(fmt::format("is the master at 127.0.0.1:{} up?", port)) !=
            std::string::npos);
  }
  REQUIRE(seconds_since(start) < 1.5);
}

TEST_CASE("tcp store: the server can listen on 0.0.0.0 and on a host name", "[store][tcp]") {
  std::string token = generate_job_token();
  for (const char* host : {"0.0.0.0", "localhost"}) {
    INFO(host);
    TcpStoreServer server(host, 0, token);
    REQUIRE(server.port() > 0);
    require_works(*connect_tcp_store("localhost", server.port(), token, kConnect), host);
  }
  TcpStoreServer taken("127.0.0.1", 0, token);
  REQUIRE_THROWS_AS(TcpStoreServer("127.0.0.1", taken.port(), token), UserError);
}

TEST_CASE("tcp store: a value over the frame limit is refused, the handle lives on", "[store][tcp]") {
  std::string token = generate_job_token();
  TcpStoreServer server("127.0.0.1", 0, token);
  auto s = connect_tcp_store("127.0.0.1", server.port(), token, kConnect);
  REQUIRE_THROWS_AS(s->set("huge", Bytes(kMaxFrameBytes)), Error);
  s->set("word", to_bytes("not a number"));
  REQUIRE_THROWS_AS(s->add("word", 1), Error);
  require_works(*s, "still-here");
}

TEST_CASE("tcp store: the server stops promptly; its clients get an error, not a hang", "[store][tcp]") {
  std::string token = generate_job_token();
  auto server = std::make_unique<TcpStoreServer>("127.0.0.1", 0, token);
  auto idle = connect_tcp_store("127.0.0.1", server->port(), token, kConnect);
  auto waiter = connect_tcp_store("127.0.0.1", server->port(), token, kConnect);
  std::vector<std::future<void>> parked;
  for (int i = 0; i < 3; i++) parked.push_back(std::async(std::launch::async, [&] { waiter->wait({"never"}, 10s); }));
  std::this_thread::sleep_for(100ms);
  auto start = Clock::now();
  server.reset();
  REQUIRE(seconds_since(start) < 0.5);
  for (auto& p : parked) {
    REQUIRE(p.wait_for(2s) == std::future_status::ready);
    try {
      p.get();
      FAIL("a wait on a stopped server returned");
    } catch (const StoreTimeout&) {
      FAIL("a stopped server looked like a timeout");
    } catch (const std::exception& e) {
      REQUIRE(std::string(e.what()).find("127.0.0.1") != std::string::npos);
    }
  }
  REQUIRE_THROWS(idle->set("k", to_bytes("v")));
  REQUIRE(seconds_since(start) < 2.0);
}

// A server that completes the handshake of its first connection and then
// goes silent: what a client sees of a stopped (SIGSTOP) or cut-off store.
// Later connections are queued by the kernel and never answered.
struct SilentServer {
  int listen_fd = -1, peer_fd = -1, port = 0;
  std::thread accepter;

  SilentServer() {
    listen_fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(listen_fd >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(listen_fd, 16) == 0);
    socklen_t len = sizeof addr;
    REQUIRE(::getsockname(listen_fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    port = ntohs(addr.sin_port);
    accepter = std::thread([this] {
      peer_fd = ::accept(listen_fd, nullptr, nullptr);
      char hello[256];
      ssize_t n = ::recv(peer_fd, hello, sizeof hello, 0);  // the HELLO frame, small enough for one read
      if (n > 0) ::send(peer_fd, (header(1) + kOk).data(), 5, MSG_NOSIGNAL);
    });
  }
  ~SilentServer() {
    accepter.join();
    ::close(peer_fd);
    ::close(listen_fd);
  }
};

TEST_CASE("tcp store: a server that stops answering fails each request within reply_timeout", "[store][tcp]") {
  SilentServer server;
  auto s = connect_tcp_store("127.0.0.1", server.port, "t",
                             TcpStoreOptions{.connect_timeout = kConnect, .reply_timeout = 300ms});
  auto start = Clock::now();
  try {
    s->set("k", to_bytes("v"));
    FAIL("a silent server answered");
  } catch (const StoreReplyTimeout& e) {
    REQUIRE(e.waited() == 300ms);
    REQUIRE(std::string(e.what()).find("did not answer within 0.3 s") != std::string::npos);
  }
  double first = seconds_since(start);
  REQUIRE(first >= 0.29);
  REQUIRE(first < 1.0);
  // The failed connection is dropped; a new one is not answered either, and
  // gives up as soon (a GET's own timeout plus at most reply_timeout).
  start = Clock::now();
  try {
    s->get("k", 200ms);
    FAIL("a silent server answered");
  } catch (const UserError& e) {
    REQUIRE(std::string(e.what()).find("did not answer the handshake within 0.3 s") != std::string::npos);
  }
  REQUIRE(seconds_since(start) < 1.5);
}

TEST_CASE("tcp store: job tokens are 64 fresh hex digits", "[store][tcp]") {
  std::string a = generate_job_token(), b = generate_job_token();
  REQUIRE(a.size() == 64);
  REQUIRE(a.find_first_not_of("0123456789abcdef") == std::string::npos);
  REQUIRE(a != b);
}
