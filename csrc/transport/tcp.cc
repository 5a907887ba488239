// TCP transport: per communicator and channel one listening socket, and one stream per
// connected peer pair (the lower rank dials). A connection starts with a handshake: the
// connector proves it knows the communicator's id and secret (handed out through the
// rendezvous store), or, in a job with a token (auth.h), both sides prove they hold the token by
// a challenge-response over both sides' nonces; else it is refused. Dialed-in streams wait in a
// short queue while their handshake arrives, read without blocking: a stranger (a port scanner,
// a health check) that connects and sends nothing or a few bytes holds up nobody; it is dropped
// after its deadline, or first when too many wait. The listener and the waiting streams sit in
// one epoll set per channel, so whoever waits for peers polls one descriptor however many
// strangers wait.
#include <errno.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>

#include <array>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>

#include "base/config.h"
#include "base/error.h"
#include "base/log.h"
#include "bootstrap/auth.h"
#include "bootstrap/socket.h"
#include "transport/transport.h"

namespace plexus {

namespace {

constexpr uint32_t kHelloMagic = 0x504C5848;  // "PLXH"
constexpr uint32_t kAckMagic = 0x504C5841;    // "PLXA"
constexpr uint32_t kChallengeMagic = 0x504C5843;  // "PLXC"
// How long an accepted connection may take to present its hello, and how many may be waiting
// for theirs at once (the oldest goes first beyond that).
constexpr double kHandshakeSeconds = 5.0;
constexpr size_t kMaxPending = 64;

#pragma pack(push, 1)
struct Hello {
  uint32_t magic;
  uint16_t version;
  uint16_t reserved;
  uint64_t comm_id;
  int32_t from_rank;
  int32_t to_rank;
  uint8_t secret[32];  // in a job with a token: the connector's nonce
};
// With a token, the acceptor's answer to a hello: its nonce. The connector proves first (32
// bytes), so that nobody gets a proof to attack offline without giving a valid one; the Ack then
// carries the acceptor's proof (32 bytes after it).
struct Challenge {
  uint32_t magic;
  uint8_t nonce[32];
};
struct Ack {
  uint32_t magic;
  uint32_t status;
};
#pragma pack(pop)

// What both proofs of a peer handshake cover besides the nonces: the communicator and the pair.
std::string handshake_context(uint64_t comm_id, int from, int to) {
  return "plexus peer " + std::to_string(comm_id) + " " + std::to_string(from) + ">" + std::to_string(to);
}
constexpr const char* kAcceptorRole = "acceptor";
constexpr const char* kConnectorRole = "connector";

// The IP to advertise: PLEXUS_SOCKET_IFNAME's address, else the address this host uses to
// reach the store, else loopback.
std::string advertise_address(const Store& store) {
  std::string ifname = env_string("PLEXUS_SOCKET_IFNAME");
  if (!ifname.empty()) {
    std::string ip = interface_ipv4(ifname);
    if (ip.empty()) throw InvalidArgument("PLEXUS_SOCKET_IFNAME=" + ifname + " has no IPv4 address");
    return ip;
  }
  std::string ip = store.local_address();
  if (ip.empty() || ip.find(':') != std::string::npos) return "127.0.0.1";
  return ip;
}

class TcpConnection : public Connection {
 public:
  TcpConnection(int peer, std::string peer_name, Fd fd);
  size_t write_some(const iovec* iov, int iovcnt) override;
  size_t read_some(void* dst, size_t n) override;
  int fd() const override { return fd_.get(); }
  void shutdown() override;

 private:
  [[noreturn]] void broken(const char* what, int err);
  Fd fd_;
};

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

class TcpTransport : public Transport {
 public:
  explicit TcpTransport(const TransportSetup& setup);
  // "ip:port,port": the listeners of the channels, in channel order.
  std::string address() const override;
  void start(const TransportSetup& setup, const std::vector<PeerEndpoint>& peers) override;
  bool can_connect(int peer) const override { return peers_[peer].port[0] != 0; }
  std::string why_not(int peer) const override;
  std::unique_ptr<Connection> connect(int peer, int channel, Deadline deadline) override;
  void dial_fds(int channel, std::vector<int>& out) const override;
  std::unique_ptr<Connection> accept_one(int channel) override;
  int port(int channel) const override { return port_[channel]; }
  std::string peer_address(int peer, int channel) const override;

 private:
  struct Peer {
    std::string host;
    std::array<int, kChannels> port{};
  };
  // A stream dialed in whose hello has not all arrived yet.
  struct Pending {
    Fd fd;
    std::string who;  // its address, for messages
    Deadline deadline;
    Hello hello{};
    size_t got = 0;  // bytes of the hello read so far
    // With a token, after the hello: the nonce sent in the challenge, and the proof coming back.
    bool challenged = false;
    Nonce nonce{};
    Mac proof{};
    size_t proof_got = 0;
  };
  // Accepts what is waiting on the listener, drops what is late or too many; under the lock.
  void take_new(int channel);
  // Adds `fd` to the channel's epoll set, or takes it out.
  void watch(int channel, int fd, bool on);
  // Drops a pending stream (out of the epoll set, closed); returns what follows it.
  std::deque<Pending>::iterator forget(int channel, std::deque<Pending>::iterator it);
  // Reads what arrived of `p`'s hello (and, with a token, its proof): the connection once it is
  // complete and valid, else nullptr; `drop` says whether to forget it (refused, closed, broken).
  std::unique_ptr<Connection> progress(Pending& p, bool* drop);
  // Reads up to n - *got more bytes into dst; false while some have not arrived yet (`*closed`
  // says whether the stream ended or broke instead).
  static bool read_more(Pending& p, void* dst, size_t n, size_t* got, bool* closed);
  // Sends the challenge to a complete hello; false when the stream does not take it.
  bool challenge(Pending& p);
  CommIdentity id_;
  std::vector<std::string> names_;
  std::string ip_;
  Fd listen_[kChannels];
  int port_[kChannels] = {};
  std::vector<Peer> peers_;  // by rank, once started
  // Per channel: its owner accepts, but another thread may ask for its descriptors.
  std::mutex pending_mu_[kChannels];
  std::deque<Pending> pending_[kChannels];
  Fd epoll_[kChannels];  // the listener and the pending streams of each channel
};

TcpTransport::TcpTransport(const TransportSetup& setup)
    : id_(setup.id), names_(setup.names), ip_(advertise_address(setup.store)) {
  // With an explicit interface, listen only there; otherwise on every interface.
  const std::string bind_ip = env_string("PLEXUS_SOCKET_IFNAME").empty() ? "0.0.0.0" : ip_;
  for (int ch = 0; ch < kChannels; ++ch) {
    listen_[ch] = listen_tcp(bind_ip, 0, &port_[ch]);
    epoll_[ch] = Fd(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_[ch].valid()) throw Error(std::string("epoll_create1: ") + errno_text(errno));
    watch(ch, listen_[ch].get(), true);
  }
}

std::string TcpTransport::address() const {
  std::string s = ip_;
  for (int ch = 0; ch < kChannels; ++ch) s += (ch == 0 ? ":" : ",") + std::to_string(port_[ch]);
  return s;
}

void TcpTransport::start(const TransportSetup&, const std::vector<PeerEndpoint>& peers) {
  peers_.assign(peers.size(), Peer{});
  for (size_t p = 0; p < peers.size(); ++p) {
    if (!peers[p].uses) continue;
    const std::string& a = peers[p].address;
    size_t at = a.rfind(':');
    bool ok = at != std::string::npos;
    peers_[p].host = a.substr(0, ok ? at : 0);
    for (int ch = 0; ch < kChannels && ok; ++ch) {
      char* end = nullptr;
      peers_[p].port[ch] = static_cast<int>(std::strtol(a.c_str() + at + 1, &end, 10));
      at = static_cast<size_t>(end - a.c_str());
      ok = peers_[p].port[ch] > 0 && (ch + 1 < kChannels ? a[at] == ',' : at == a.size());
    }
    if (!ok) throw Error("malformed TCP address of " + names_[p] + ": '" + a + "'");
  }
}

std::string TcpTransport::why_not(int peer) const {
  return names_[peer] + " does not use tcp (PLEXUS_TRANSPORTS differs there)";
}

std::string TcpTransport::peer_address(int peer, int channel) const {
  return HostPort{peers_[peer].host, peers_[peer].port[channel]}.str();
}

std::unique_ptr<Connection> TcpTransport::connect(int peer, int channel, Deadline deadline) {
  // The lower rank dials. Dialing blocks only on higher ranks, which never dial us: no cycle,
  // no deadlock.
  if (peer < id_.rank) return nullptr;
  const HostPort ep{peers_[peer].host, peers_[peer].port[channel]};
  const std::string& peer_name = names_[peer];
  Fd fd;
  try {
    fd = connect_tcp(ep.host, ep.port, deadline);
    Hello h{};
    h.magic = kHelloMagic;
    h.version = 1;
    h.comm_id = id_.comm_id;
    h.from_rank = id_.rank;
    h.to_rank = peer;
    const bool authenticated = !id_.token.empty();
    const Nonce mine = authenticated ? fresh_nonce() : Nonce{};
    std::memcpy(h.secret, authenticated ? mine.data() : id_.secret.data(), 32);
    send_all(fd.get(), &h, sizeof(h), deadline);
    Nonce theirs{};
    const std::string context = handshake_context(id_.comm_id, id_.rank, peer);
    if (authenticated) {
      Challenge c{};
      recv_all(fd.get(), &c.magic, sizeof(c.magic), deadline);
      if (c.magic == kAckMagic)
        throw Error("it does not authenticate (PLEXUS_AUTH_TOKEN is set here but not there)");
      if (c.magic != kChallengeMagic) throw Error("handshake refused");
      recv_all(fd.get(), c.nonce, sizeof(c.nonce), deadline);
      std::memcpy(theirs.data(), c.nonce, theirs.size());
      Mac proof = handshake_proof(id_.token, kConnectorRole, context, theirs, mine);
      send_all(fd.get(), proof.data(), proof.size(), deadline);
    }
    Ack ack{};
    try {
      recv_all(fd.get(), &ack.magic, sizeof(ack.magic), deadline);
    } catch (const Timeout&) {
      throw;
    } catch (const Error&) {
      if (authenticated) throw Error("it refused this rank's proof (PLEXUS_AUTH_TOKEN differs there)");
      throw;
    }
    if (ack.magic == kChallengeMagic)
      throw Error("it asks for authentication (PLEXUS_AUTH_TOKEN is set there but not here)");
    recv_all(fd.get(), &ack.status, sizeof(ack.status), deadline);
    if (ack.magic != kAckMagic || ack.status != 0) throw Error("handshake refused");
    if (authenticated) {
      Mac answer;
      recv_all(fd.get(), answer.data(), answer.size(), deadline);
      Mac expected = handshake_proof(id_.token, kAcceptorRole, context, mine, theirs);
      if (!same_bytes(expected.data(), answer.data(), expected.size()))
        throw Error("it does not hold this job's token (PLEXUS_AUTH_TOKEN differs there)");
    }
  } catch (const Error& e) {
    throw PeerError(peer, "cannot connect to " + peer_name + " at " + ep.str() + ": " + e.what());
  }
  PLEXUS_TRACE("connected to " << peer_name << " at " << ep.str());
  return std::make_unique<TcpConnection>(peer, peer_name, std::move(fd));
}

void TcpTransport::dial_fds(int channel, std::vector<int>& out) const { out.push_back(epoll_[channel].get()); }

void TcpTransport::watch(int channel, int fd, bool on) {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = fd;
  if (::epoll_ctl(epoll_[channel].get(), on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, fd, &ev) != 0)
    throw Error(std::string("epoll_ctl: ") + errno_text(errno));
}

std::deque<TcpTransport::Pending>::iterator TcpTransport::forget(int channel, std::deque<Pending>::iterator it) {
  watch(channel, it->fd.get(), false);
  return pending_[channel].erase(it);
}

void TcpTransport::take_new(int channel) {
  auto& pending = pending_[channel];
  while (true) {
    Fd fd = accept_tcp(listen_[channel].get());
    if (!fd.valid()) break;
    set_nonblocking(fd.get(), true);
    std::string who = peer_ip(fd.get());
    watch(channel, fd.get(), true);
    pending.push_back(Pending{std::move(fd), who, Deadline::after_seconds(kHandshakeSeconds)});
    if (pending.size() > kMaxPending) {
      PLEXUS_WARN("refused a connection from " << pending.front().who << ": " << kMaxPending
                                               << " connections wait for their handshake; this one is the oldest");
      forget(channel, pending.begin());
    }
  }
  for (auto it = pending.begin(); it != pending.end();) {
    if (it->deadline.passed()) {
      PLEXUS_WARN("refused a connection from " << it->who << ": no valid handshake within " << kHandshakeSeconds
                                               << " s (" << it->got << " of " << sizeof(Hello) << " bytes)");
      it = forget(channel, it);
    } else {
      ++it;
    }
  }
}

bool TcpTransport::read_more(Pending& p, void* dst, size_t n, size_t* got, bool* closed) {
  *closed = false;
  while (*got < n) {
    ssize_t k = ::recv(p.fd.get(), static_cast<char*>(dst) + *got, n - *got, MSG_DONTWAIT);
    if (k > 0) {
      *got += static_cast<size_t>(k);
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    *closed = !(k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
    return false;
  }
  return true;
}

bool TcpTransport::challenge(Pending& p) {
  p.nonce = fresh_nonce();
  Challenge c{};
  c.magic = kChallengeMagic;
  std::memcpy(c.nonce, p.nonce.data(), sizeof(c.nonce));
  p.challenged = true;
  // 36 bytes into an empty socket buffer: sent at once, or the peer is gone.
  return ::send(p.fd.get(), &c, sizeof(c), MSG_NOSIGNAL | MSG_DONTWAIT) == static_cast<ssize_t>(sizeof(c));
}

std::unique_ptr<Connection> TcpTransport::progress(Pending& p, bool* drop) {
  *drop = true;
  bool closed = false;
  const bool authenticated = !id_.token.empty();
  std::string our_proof;  // with a token: sent after the Ack once the connector's proof checks out
  if (!p.challenged) {
    if (!read_more(p, &p.hello, sizeof(Hello), &p.got, &closed)) {
      if (closed)
        PLEXUS_WARN("refused a connection from " << p.who << ": closed before its handshake (" << p.got << " of "
                                                 << sizeof(Hello) << " bytes)");
      *drop = closed;
      return nullptr;
    }
    const Hello& h = p.hello;
    const char* problem = nullptr;
    if (h.magic != kHelloMagic || h.version != 1) problem = "not a plexus peer";
    else if (h.comm_id != id_.comm_id) problem = "it belongs to another communicator";
    else if (h.to_rank != id_.rank || h.from_rank < 0 || h.from_rank >= id_.size) problem = "bad ranks";
    else if (!authenticated && !same_bytes(h.secret, id_.secret.data(), 32)) problem = "wrong secret";
    if (problem) {
      PLEXUS_WARN("refused a connection from " << p.who << ": " << problem);
      return nullptr;
    }
    if (authenticated) {
      if (!challenge(p)) {
        PLEXUS_WARN("refused a connection from " << p.who << ": it did not take the handshake's challenge");
        return nullptr;
      }
      *drop = false;
      return nullptr;  // its proof comes next
    }
  } else {
    if (!read_more(p, p.proof.data(), p.proof.size(), &p.proof_got, &closed)) {
      if (closed) PLEXUS_WARN("refused a connection from " << p.who << ": closed before its proof");
      *drop = closed;
      return nullptr;
    }
    Nonce theirs;
    std::memcpy(theirs.data(), p.hello.secret, theirs.size());
    const std::string context = handshake_context(id_.comm_id, p.hello.from_rank, p.hello.to_rank);
    Mac expected = handshake_proof(id_.token, kConnectorRole, context, p.nonce, theirs);
    if (!same_bytes(expected.data(), p.proof.data(), expected.size())) {
      PLEXUS_WARN("refused a connection from " << p.who << ": it does not hold this job's token");
      return nullptr;
    }
    Mac ours = handshake_proof(id_.token, kAcceptorRole, context, theirs, p.nonce);
    our_proof.assign(reinterpret_cast<const char*>(ours.data()), ours.size());
  }
  const Hello& h = p.hello;
  // The Ack (and, with a token, our proof): at most 40 bytes into a socket buffer the peer has
  // emptied, sent at once, or the peer is gone.
  const Ack ack{kAckMagic, 0};
  const std::string answer = std::string(reinterpret_cast<const char*>(&ack), sizeof(ack)) + our_proof;
  if (::send(p.fd.get(), answer.data(), answer.size(), MSG_NOSIGNAL | MSG_DONTWAIT) !=
      static_cast<ssize_t>(answer.size())) {
    PLEXUS_WARN("refused a connection from " << p.who << ": it did not take the handshake's answer");
    return nullptr;
  }
  PLEXUS_TRACE("accepted " << names_[h.from_rank] << " from " << p.who);
  return std::make_unique<TcpConnection>(h.from_rank, names_[h.from_rank], std::move(p.fd));
}

std::unique_ptr<Connection> TcpTransport::accept_one(int channel) {
  std::lock_guard<std::mutex> lock(pending_mu_[channel]);
  epoll_event events[kMaxPending + 1];
  const int ready = ::epoll_wait(epoll_[channel].get(), events, kMaxPending + 1, 0);
  bool dialed = false;
  std::vector<int> news;  // pending streams with bytes (or an end) to read
  for (int i = 0; i < ready; ++i) {
    if (events[i].data.fd == listen_[channel].get()) dialed = true;
    else news.push_back(events[i].data.fd);
  }
  if (dialed) take_new(channel);
  auto& pending = pending_[channel];
  for (auto it = pending.begin(); it != pending.end();) {
    const int fd = it->fd.get();
    if (std::find(news.begin(), news.end(), fd) == news.end()) {
      ++it;
      continue;
    }
    bool drop = false;
    std::unique_ptr<Connection> conn = progress(*it, &drop);
    if (conn) {  // its descriptor moved into the connection: stop watching it here
      epoll_event ev{};
      ::epoll_ctl(epoll_[channel].get(), EPOLL_CTL_DEL, fd, &ev);
      pending.erase(it);
      return conn;
    }
    if (drop) {
      it = forget(channel, it);
    } else {
      ++it;
    }
  }
  return nullptr;
}

}  // namespace

std::unique_ptr<Transport> open_tcp(const TransportSetup& setup) { return std::make_unique<TcpTransport>(setup); }

}  // namespace plexus
