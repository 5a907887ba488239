// A key-value store that ranks use to find each other (rendezvous). Blocking calls, each bounded
// by a deadline. Implementations: TcpStore (this library's server/client), PrefixStore (a
// namespace inside another store); the bindings add one that forwards to a Python store.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "base/deadline.h"

namespace plexus {

class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::string& value) = 0;
  // Waits until `key` exists; throws Timeout when the deadline passes first.
  virtual std::string get(const std::string& key, Deadline deadline) = 0;
  // Adds `delta` to the integer at `key` (missing counts as 0) and returns the new value.
  virtual int64_t add(const std::string& key, int64_t delta) = 0;
  // The local IP address this host uses to reach the store, or "" when unknown; a good guess at
  // an address that the other ranks can reach us on.
  virtual std::string local_address() const { return ""; }
};

class PrefixStore : public Store {
 public:
  PrefixStore(std::shared_ptr<Store> base, std::string prefix)
      : base_(std::move(base)), prefix_(std::move(prefix)) {}
  void set(const std::string& key, const std::string& value) override {
    base_->set(prefix_ + key, value);
  }
  std::string get(const std::string& key, Deadline deadline) override {
    return base_->get(prefix_ + key, deadline);
  }
  int64_t add(const std::string& key, int64_t delta) override {
    return base_->add(prefix_ + key, delta);
  }
  std::string local_address() const override { return base_->local_address(); }

 private:
  std::shared_ptr<Store> base_;
  std::string prefix_;
};

}  // namespace plexus
