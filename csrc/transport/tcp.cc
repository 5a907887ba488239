#include "transport/tcp.h"

#include <errno.h>
#include <sys/socket.h>

#include <cstring>

#include "base/error.h"
#include "base/log.h"

namespace plexus {

namespace {

constexpr uint32_t kHelloMagic = 0x504C5848;  // "PLXH"
constexpr uint32_t kAckMagic = 0x504C5841;    // "PLXA"
// How long an accepted connection may take to present its hello.
constexpr double kHandshakeSeconds = 5.0;

#pragma pack(push, 1)
struct Hello {
  uint32_t magic;
  uint16_t version;
  uint16_t reserved;
  uint64_t comm_id;
  int32_t from_rank;
  int32_t to_rank;
  uint8_t secret[32];
};
struct Ack {
  uint32_t magic;
  uint32_t status;
};
#pragma pack(pop)

bool same_secret(const uint8_t* a, const uint8_t* b) {
  uint8_t diff = 0;  // constant time: do not leak how many bytes matched
  for (int i = 0; i < 32; ++i) diff |= static_cast<uint8_t>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

TcpConnection::TcpConnection(int peer, std::string peer_name, Fd fd)
    : Connection(peer, std::move(peer_name)), fd_(std::move(fd)) {
  set_nonblocking(fd_.get(), true);
}

void TcpConnection::broken(const char* what, int err) {
  std::string msg = "connection to " + peer_name() + " " + what;
  if (err) msg += " (" + errno_text(err) + ")";
  throw PeerError(peer(), msg);
}

size_t TcpConnection::write_some(const iovec* iov, int iovcnt) {
  if (!fd_.valid()) broken("is closed", 0);
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov);
  msg.msg_iovlen = static_cast<size_t>(iovcnt);
  while (true) {
    ssize_t k = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k >= 0) return static_cast<size_t>(k);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    broken("was lost while sending: the peer process probably died", errno);
  }
}

size_t TcpConnection::read_some(void* dst, size_t n) {
  if (!fd_.valid()) broken("is closed", 0);
  if (n == 0) return 0;
  while (true) {
    ssize_t k = ::recv(fd_.get(), dst, n, MSG_DONTWAIT);
    if (k > 0) return static_cast<size_t>(k);
    if (k == 0) broken("was closed by the peer: the peer process probably died or aborted", 0);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    broken("was lost while receiving: the peer process probably died", errno);
  }
}

void TcpConnection::shutdown() {
  if (fd_.valid()) ::shutdown(fd_.get(), SHUT_WR);
}

TcpTransport::TcpTransport(const CommIdentity& id, const std::string& bind_ip) : id_(id) {
  listen_ = listen_tcp(bind_ip, 0, &port_);
}

std::unique_ptr<Connection> TcpTransport::connect(int peer, const std::string& peer_name,
                                                  const HostPort& ep, Deadline deadline) {
  Fd fd;
  try {
    fd = connect_tcp(ep.host, ep.port, deadline);
    Hello h{};
    h.magic = kHelloMagic;
    h.version = 1;
    h.comm_id = id_.comm_id;
    h.from_rank = id_.rank;
    h.to_rank = peer;
    std::memcpy(h.secret, id_.secret.data(), 32);
    send_all(fd.get(), &h, sizeof(h), deadline);
    Ack ack{};
    recv_all(fd.get(), &ack, sizeof(ack), deadline);
    if (ack.magic != kAckMagic || ack.status != 0) throw Error("handshake refused");
  } catch (const Error& e) {
    throw PeerError(peer, "cannot connect to " + peer_name + " at " + ep.str() + ": " + e.what());
  }
  PLEXUS_TRACE("connected to " << peer_name << " at " << ep.str());
  return std::make_unique<TcpConnection>(peer, peer_name, std::move(fd));
}

std::unique_ptr<Connection> TcpTransport::accept_one(const std::function<std::string(int)>& name_of) {
  Fd fd = accept_tcp(listen_.get());
  if (!fd.valid()) return nullptr;
  std::string who = peer_ip(fd.get());
  Hello h{};
  try {
    recv_all(fd.get(), &h, sizeof(h), Deadline::after_seconds(kHandshakeSeconds));
  } catch (const Error& e) {
    PLEXUS_WARN("refused a connection from " << who << ": no valid handshake (" << e.what() << ")");
    return nullptr;
  }
  const char* problem = nullptr;
  if (h.magic != kHelloMagic || h.version != 1) problem = "not a plexus peer";
  else if (h.comm_id != id_.comm_id) problem = "it belongs to another communicator";
  else if (!same_secret(h.secret, id_.secret.data())) problem = "wrong secret";
  else if (h.to_rank != id_.rank || h.from_rank < 0 || h.from_rank >= id_.size) problem = "bad ranks";
  if (problem) {
    PLEXUS_WARN("refused a connection from " << who << ": " << problem);
    return nullptr;
  }
  Ack ack{kAckMagic, 0};
  try {
    send_all(fd.get(), &ack, sizeof(ack), Deadline::after_seconds(kHandshakeSeconds));
  } catch (const Error&) {
    return nullptr;
  }
  PLEXUS_TRACE("accepted " << name_of(h.from_rank) << " from " << who);
  return std::make_unique<TcpConnection>(h.from_rank, name_of(h.from_rank), std::move(fd));
}

}  // namespace plexus
