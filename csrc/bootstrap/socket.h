// Thin, deadline-aware helpers over POSIX TCP sockets, shared by the store and the TCP transport.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "base/deadline.h"

namespace plexus {

// Owns a file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void reset();

 private:
  int fd_ = -1;
};

struct HostPort {
  std::string host;
  int port = 0;
  std::string str() const { return host + ":" + std::to_string(port); }
};
// "host:port" -> HostPort; throws InvalidArgument.
HostPort parse_host_port(const std::string& s);

// Listens on `bind_ip` ("0.0.0.0" for all) and `port` (0 picks a free one).
Fd listen_tcp(const std::string& bind_ip, int port, int* bound_port);
// One connection attempt; throws Error with errno text on failure or when the deadline passes.
Fd connect_tcp(const std::string& host, int port, Deadline deadline);
// Retries refused/unreachable connects until the deadline (the server may start later).
Fd connect_tcp_retry(const std::string& host, int port, Deadline deadline);
// accept() that returns an invalid Fd when nothing is pending (listener is non-blocking).
Fd accept_tcp(int listen_fd);

void set_nonblocking(int fd, bool on);
void set_tcp_options(int fd);  // TCP_NODELAY, keep-alive
std::string local_ip(int fd);
std::string peer_ip(int fd);

// Blocking transfers bounded by a deadline; they throw Error("... timed out") or Error on EOF.
void send_all(int fd, const void* data, size_t n, Deadline deadline);
void recv_all(int fd, void* data, size_t n, Deadline deadline);

// IPv4 address of a network interface by name, or "" when it has none.
std::string interface_ipv4(const std::string& ifname);

}  // namespace plexus
