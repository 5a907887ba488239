#include "bootstrap/socket.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "base/error.h"

namespace plexus {

void Fd::reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

HostPort parse_host_port(const std::string& s) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size())
    throw InvalidArgument("expected host:port, got '" + s + "'");
  HostPort hp;
  hp.host = s.substr(0, colon);
  if (hp.host.size() > 2 && hp.host.front() == '[' && hp.host.back() == ']')
    hp.host = hp.host.substr(1, hp.host.size() - 2);
  try {
    size_t used = 0;
    hp.port = std::stoi(s.substr(colon + 1), &used);
    if (used != s.size() - colon - 1) throw std::invalid_argument("junk");
  } catch (const std::exception&) {
    throw InvalidArgument("bad port in '" + s + "'");
  }
  if (hp.port <= 0 || hp.port > 65535) throw InvalidArgument("port out of range in '" + s + "'");
  return hp;
}

void set_nonblocking(int fd, bool on) {
  int flags = fcntl(fd, F_GETFL, 0);
  fcntl(fd, F_SETFL, on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK));
}

void set_tcp_options(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
}

Fd listen_tcp(const std::string& bind_ip, int port, int* bound_port) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) throw Error("socket(): " + errno_text(errno));
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, bind_ip.c_str(), &addr.sin_addr) != 1)
    throw InvalidArgument("cannot listen on '" + bind_ip + "': not an IPv4 address");
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
    throw Error("cannot listen on " + bind_ip + ":" + std::to_string(port) + ": " +
                errno_text(errno));
  if (::listen(fd.get(), 1024) != 0) throw Error("listen(): " + errno_text(errno));
  socklen_t len = sizeof(addr);
  getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  if (bound_port) *bound_port = ntohs(addr.sin_port);
  set_nonblocking(fd.get(), true);
  return fd;
}

namespace {

// Connects one socket to one resolved address, waiting at most until the deadline.
Fd connect_addr(const addrinfo* ai, Deadline deadline, int* err) {
  Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
  if (!fd.valid()) {
    *err = errno;
    return Fd();
  }
  set_nonblocking(fd.get(), true);
  int rc = ::connect(fd.get(), ai->ai_addr, ai->ai_addrlen);
  if (rc != 0 && errno != EINPROGRESS) {
    *err = errno;
    return Fd();
  }
  if (rc != 0) {
    pollfd p{fd.get(), POLLOUT, 0};
    while (true) {
      int n = ::poll(&p, 1, deadline.poll_ms());
      if (n < 0 && errno == EINTR) continue;
      if (n > 0) break;
      if (deadline.passed()) {
        *err = ETIMEDOUT;
        return Fd();
      }
    }
    int so_err = 0;
    socklen_t len = sizeof(so_err);
    getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &so_err, &len);
    if (so_err != 0) {
      *err = so_err;
      return Fd();
    }
  }
  set_nonblocking(fd.get(), false);
  set_tcp_options(fd.get());
  return fd;
}

}  // namespace

Fd connect_tcp(const std::string& host, int port, Deadline deadline) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) throw Error("cannot resolve '" + host + "': " + gai_strerror(rc));
  int err = 0;
  Fd fd;
  for (addrinfo* ai = res; ai && !fd.valid(); ai = ai->ai_next) fd = connect_addr(ai, deadline, &err);
  freeaddrinfo(res);
  if (!fd.valid())
    throw Error("cannot connect to " + host + ":" + std::to_string(port) + ": " + errno_text(err));
  return fd;
}

Fd connect_tcp_retry(const std::string& host, int port, Deadline deadline) {
  int backoff_ms = 10;
  while (true) {
    try {
      return connect_tcp(host, port, deadline);
    } catch (const Error&) {
      if (deadline.passed()) throw;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(backoff_ms));
    backoff_ms = backoff_ms < 500 ? backoff_ms * 2 : 500;
  }
}

Fd accept_tcp(int listen_fd) {
  int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return Fd();
  set_nonblocking(fd, false);
  set_tcp_options(fd);
  return Fd(fd);
}

namespace {
std::string sockaddr_ip(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (ss.ss_family == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr, buf, sizeof(buf));
  else if (ss.ss_family == AF_INET6)
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr, buf, sizeof(buf));
  return buf;
}
}  // namespace

std::string local_ip(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "";
  return sockaddr_ip(ss);
}

std::string peer_ip(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "";
  return sockaddr_ip(ss);
}

void send_all(int fd, const void* data, size_t n, Deadline deadline) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    pollfd pfd{fd, POLLOUT, 0};
    int r = ::poll(&pfd, 1, deadline.poll_ms());
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) {
      if (deadline.passed()) throw Timeout("send timed out");
      continue;
    }
    ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      throw Error("send failed: " + errno_text(errno));
    }
    p += k;
    n -= static_cast<size_t>(k);
  }
}

void recv_all(int fd, void* data, size_t n, Deadline deadline) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    pollfd pfd{fd, POLLIN, 0};
    int r = ::poll(&pfd, 1, deadline.poll_ms());
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) {
      if (deadline.passed()) throw Timeout("receive timed out");
      continue;
    }
    ssize_t k = ::recv(fd, p, n, MSG_DONTWAIT);
    if (k == 0) throw Error("connection closed by the other side");
    if (k < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      throw Error("receive failed: " + errno_text(errno));
    }
    p += k;
    n -= static_cast<size_t>(k);
  }
}

std::string interface_ipv4(const std::string& ifname) {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "";
  std::string ip;
  for (ifaddrs* it = list; it; it = it->ifa_next) {
    if (!it->ifa_addr || it->ifa_addr->sa_family != AF_INET || ifname != it->ifa_name) continue;
    char buf[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(it->ifa_addr)->sin_addr, buf, sizeof(buf));
    ip = buf;
    break;
  }
  freeifaddrs(list);
  return ip;
}

}  // namespace plexus
