// The adapter from tandem's Store to gloo::rendezvous::Store.
#include "collectives/gloo_store.h"

namespace tandem::collectives {

namespace {

class GlooStore : public gloo::rendezvous::Store {
 public:
  GlooStore(std::shared_ptr<collectives::Store> store, Millis timeout)
      : store_(std::move(store)), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override { store_->set(key, data); }
  std::vector<char> get(const std::string& key) override { return store_->get(key, timeout_); }
  void wait(const std::vector<std::string>& keys) override { store_->wait(keys, timeout_); }
  // Gloo passes its kNoTimeout (zero) for "no limit"; we never wait without one.
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    store_->wait(keys, timeout > Millis::zero() ? timeout : timeout_);
  }

 private:
  std::shared_ptr<collectives::Store> store_;
  Millis timeout_;
};

}  // namespace

std::shared_ptr<gloo::rendezvous::Store> make_gloo_store(std::shared_ptr<Store> store, Millis timeout) {
  return std::make_shared<GlooStore>(std::move(store), timeout);
}

}  // namespace tandem::collectives
