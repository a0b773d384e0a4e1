// MemoryStore (ranks as threads of one process) and PrefixStore.
#include <fmt/format.h>

#include <condition_variable>
#include <map>
#include <mutex>

#include "collectives/store.h"

namespace tandem::collectives {

namespace {

std::string missing_keys(const std::vector<std::string>& keys, const std::map<std::string, Bytes>& data) {
  std::string out;
  for (const std::string& k : keys)
    if (!data.count(k)) out += (out.empty() ? "" : ", ") + k;
  return out;
}

class MemoryStore : public Store {
 public:
  void set(const std::string& key, const Bytes& value) override {
    std::lock_guard<std::mutex> lock(mutex_);
    data_[key] = value;
    changed_.notify_all();
  }

  Bytes get(const std::string& key, Millis timeout) override {
    wait({key}, timeout);
    std::lock_guard<std::mutex> lock(mutex_);
    return data_.at(key);
  }

  int64_t add(const std::string& key, int64_t delta) override {
    std::lock_guard<std::mutex> lock(mutex_);
    int64_t value = 0;
    if (auto it = data_.find(key); it != data_.end()) value = std::stoll(to_string(it->second));
    value += delta;
    data_[key] = to_bytes(std::to_string(value));
    changed_.notify_all();
    return value;
  }

  void wait(const std::vector<std::string>& keys, Millis timeout) override {
    std::unique_lock<std::mutex> lock(mutex_);
    bool ok = changed_.wait_for(lock, timeout, [&] { return missing_keys(keys, data_).empty(); });
    if (!ok) throw StoreTimeout(fmt::format("store wait timed out after {} ms; missing keys: {}", timeout.count(),
                                            missing_keys(keys, data_)));
  }

  Bytes compare_set(const std::string& key, const Bytes& expected, const Bytes& desired) override {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = data_.find(key);
    if ((it == data_.end() && expected.empty()) || (it != data_.end() && it->second == expected)) {
      data_[key] = desired;
      changed_.notify_all();
      return desired;
    }
    return it == data_.end() ? Bytes() : it->second;
  }

  bool remove(const std::string& key) override {
    std::lock_guard<std::mutex> lock(mutex_);
    return data_.erase(key) > 0;
  }

  bool check(const std::vector<std::string>& keys) override {
    std::lock_guard<std::mutex> lock(mutex_);
    return missing_keys(keys, data_).empty();
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<std::string, Bytes> data_;
};

class PrefixStore : public Store {
 public:
  PrefixStore(std::string prefix, std::shared_ptr<Store> base) : prefix_(std::move(prefix) + "/"), base_(std::move(base)) {}

  void set(const std::string& key, const Bytes& value) override { base_->set(prefix_ + key, value); }
  Bytes get(const std::string& key, Millis timeout) override { return base_->get(prefix_ + key, timeout); }
  int64_t add(const std::string& key, int64_t delta) override { return base_->add(prefix_ + key, delta); }
  void wait(const std::vector<std::string>& keys, Millis timeout) override { base_->wait(prefixed(keys), timeout); }
  Bytes compare_set(const std::string& key, const Bytes& expected, const Bytes& desired) override {
    return base_->compare_set(prefix_ + key, expected, desired);
  }
  bool remove(const std::string& key) override { return base_->remove(prefix_ + key); }
  bool check(const std::vector<std::string>& keys) override { return base_->check(prefixed(keys)); }

 private:
  std::vector<std::string> prefixed(const std::vector<std::string>& keys) const {
    std::vector<std::string> out;
    for (const std::string& k : keys) out.push_back(prefix_ + k);
    return out;
  }

  std::string prefix_;
  std::shared_ptr<Store> base_;
};

}  // namespace

std::shared_ptr<Store> make_memory_store() { return std::make_shared<MemoryStore>(); }

std::shared_ptr<Store> make_prefix_store(std::string prefix, std::shared_ptr<Store> base) {
  return std::make_shared<PrefixStore>(std::move(prefix), std::move(base));
}

}  // namespace tandem::collectives
