// TCP transport: one listening socket per communicator, one stream per connected peer pair.
// A connection starts with an authenticated handshake: the connector proves it knows the
// communicator's id and secret (handed out through the rendezvous store) or is refused.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "base/deadline.h"
#include "bootstrap/identity.h"
#include "bootstrap/socket.h"
#include "transport/connection.h"

namespace plexus {

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
