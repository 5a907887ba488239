// TCP transport: one listening socket per communicator, one stream per connected peer pair.
// A connection starts with an authenticated handshake: the connector proves it knows the
// communicator's id and secret (handed out through the rendezvous store) or is refused.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "bootstrap/socket.h"
#include "core/deadline.h"
#include "transport/connection.h"

namespace plexus {

struct CommIdentity {
  uint64_t comm_id = 0;
  std::array<uint8_t, 32> secret{};
  int rank = 0;
  int size = 1;
};

class TcpConnection : public Connection {
 public:
  TcpConnection(int peer, std::string peer_name, Fd fd);
  size_t write_some(const iovec* iov, int iovcnt) override;
  size_t read_some(void* dst, size_t n) override;
  int fd() const override { return fd_.get(); }
  void shutdown() override;
  const char* transport_name() const override { return "tcp"; }

 private:
  [[noreturn]] void broken(const char* what, int err);
  Fd fd_;
};

class TcpTransport {
 public:
  TcpTransport(const CommIdentity& id, const std::string& bind_ip);
  int listen_fd() const { return listen_.get(); }
  int port() const { return port_; }

  // Connects to `peer` listening at `ep` and completes the handshake before the deadline.
  std::unique_ptr<Connection> connect(int peer, const std::string& peer_name, const HostPort& ep,
                                      Deadline deadline);
  // Takes one pending connection off the listener and checks its handshake. Returns nullptr
  // when none is pending or the connector was refused (logged as a warning). `name_of` gives
  // the name of the connected rank.
  std::unique_ptr<Connection> accept_one(const std::function<std::string(int)>& name_of);

 private:
  CommIdentity id_;
  Fd listen_;
  int port_ = 0;
};

}  // namespace plexus
