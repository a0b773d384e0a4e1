// A key-value store for rendezvous: ranks publish addresses, NCCL unique
// ids and health records, and wait for each other's. Three implementations:
//   MemoryStore  in one process (ranks as threads, for tests);
//   TcpStore     a client of a TcpStoreServer (served by the launcher, or by
//                rank 0 when a job is started by hand: Note [Rank 0 serves
//                the store] in runtime/parallel/process_group.h),
//                token-authenticated;
//   PrefixStore  a namespace inside another store (one per process group).
// make_gloo_store() (gloo_store.h) adapts any of them to Gloo's rendezvous::Store.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace tandem::collectives {

using Bytes = std::vector<char>;
using Millis = std::chrono::milliseconds;

// What a wait that ran out of time throws. The message names the keys.
class StoreTimeout : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Store {
 public:
  virtual ~Store() = default;

  virtual void set(const std::string& key, const Bytes& value) = 0;
  // Waits up to `timeout` for `key` to exist, then returns its value.
  virtual Bytes get(const std::string& key, Millis timeout) = 0;
  // Adds `delta` to the integer stored at `key` (0 if absent); returns the result.
  virtual int64_t add(const std::string& key, int64_t delta) = 0;
  // Waits until every key exists; throws StoreTimeout naming the missing ones.
  virtual void wait(const std::vector<std::string>& keys, Millis timeout) = 0;
  // Sets `key` to `desired` if its value is `expected` (or it is absent and
  // `expected` is empty); returns the value it holds afterwards.
  virtual Bytes compare_set(const std::string& key, const Bytes& expected, const Bytes& desired) = 0;
  // Removes `key`; returns whether it existed.
  virtual bool remove(const std::string& key) = 0;
  // Whether every key exists now (no waiting).
  virtual bool check(const std::vector<std::string>& keys) = 0;
};

// Helpers for the common string and integer cases.
inline Bytes to_bytes(const std::string& s) { return Bytes(s.begin(), s.end()); }
inline std::string to_string(const Bytes& b) { return std::string(b.begin(), b.end()); }

std::shared_ptr<Store> make_memory_store();
std::shared_ptr<Store> make_prefix_store(std::string prefix, std::shared_ptr<Store> base);

}  // namespace tandem::collectives
