// The rendezvous store: rank 0 runs TcpStoreServer on a thread; every rank (rank 0 included)
// talks to it through a TcpStoreClient.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "base/fork.h"
#include "bootstrap/socket.h"
#include "bootstrap/store.h"

namespace plexus {

class TcpStoreServer {
 public:
  // Listens on bind_ip:port (port 0 picks one; see port()).
  TcpStoreServer(const std::string& bind_ip, int port);
  ~TcpStoreServer();
  int port() const { return port_; }

 private:
  void serve();
  std::string token_;  // the job token; "" when the job is unauthenticated
  Fd listen_fd_;
  Fd wake_read_, wake_write_;
  int port_ = 0;
  std::thread thread_;
  int generation_ = fork_generation();  // of the process that made it
};

class TcpStoreClient : public Store {
 public:
  // Connects to the server, retrying until `timeout_s` passes (the server may start later).
  TcpStoreClient(const std::string& host, int port, double timeout_s);
  void set(const std::string& key, const std::string& value) override;
  std::string get(const std::string& key, Deadline deadline) override;
  int64_t add(const std::string& key, int64_t delta) override;
  // The address this host uses to reach the store: a good guess at an address peers can reach.
  std::string local_address() const override { return local_ip_; }
  std::string server() const { return host_ + ":" + std::to_string(port_); }

 private:
  // The challenge-response of a job with a token (see tcp_store.cc); throws if it fails.
  void authenticate(const std::string& token);
  std::string request(uint8_t cmd, const std::string& key, const std::string& value,
                      Deadline deadline, bool* found);
  std::mutex mu_;
  Fd fd_;
  std::string host_;
  int port_;
  double timeout_s_;
  std::string local_ip_;
  int generation_ = fork_generation();  // of the process that connected
};

}  // namespace plexus
