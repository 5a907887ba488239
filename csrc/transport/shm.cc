// Shared-memory transport, for the ranks of one host. Its streams are byte rings in the
// segments of transport/shm_segment.h: to a peer through a ring in the peer's segment (we
// write) and a ring in ours (we read). No file descriptor: the progress engines poll them by
// calling read_some/write_some. The same segments hold the host memory of the direct
// algorithms.
#include <algorithm>
#include <cstring>

#include "base/error.h"
#include "transport/shm_segment.h"
#include "transport/transport.h"

namespace plexus {

namespace {

static_assert(kShmChannels == kChannels, "one ring per channel and peer");

class ShmConnection : public Connection {
 public:
  ShmConnection(int peer, ShmHost& host, int channel);
  size_t write_some(const iovec* iov, int iovcnt) override;
  size_t read_some(void* dst, size_t n) override;
  int fd() const override { return -1; }
  void shutdown() override {}
  void check_peer(bool reading) override;

 private:
  ShmHost& host_;
  int peer_local_;
  RingHeader& out_;  // in the peer's segment
  char* out_data_;
  RingHeader& in_;   // in ours
  char* in_data_;
  size_t cap_;
};

ShmConnection::ShmConnection(int peer, ShmHost& host, int channel)
    : Connection(peer, host.name_of(host.local_index_of(peer))),
      host_(host),
      peer_local_(host.local_index_of(peer)),
      out_(host.ring(channel, peer_local_, host.local_index())),
      out_data_(host.ring_data(channel, peer_local_, host.local_index())),
      in_(host.ring(channel, host.local_index(), peer_local_)),
      in_data_(host.ring_data(channel, host.local_index(), peer_local_)),
      cap_(host.layout().ring_bytes) {}

size_t ShmConnection::write_some(const iovec* iov, int iovcnt) {
  const uint64_t head = out_.head.load(std::memory_order_relaxed);
  const uint64_t tail = out_.tail.load(std::memory_order_acquire);
  size_t space = cap_ - static_cast<size_t>(head - tail);
  size_t written = 0;
  for (int i = 0; i < iovcnt && space > 0; ++i) {
    const char* src = static_cast<const char*>(iov[i].iov_base);
    size_t len = std::min(iov[i].iov_len, space);
    size_t pos = static_cast<size_t>((head + written) % cap_);
    size_t first = std::min(len, cap_ - pos);
    std::memcpy(out_data_ + pos, src, first);
    if (len > first) std::memcpy(out_data_, src + first, len - first);
    written += len;
    space -= len;
  }
  if (written) out_.head.store(head + written, std::memory_order_release);
  return written;
}

size_t ShmConnection::read_some(void* dst, size_t n) {
  const uint64_t tail = in_.tail.load(std::memory_order_relaxed);
  const uint64_t head = in_.head.load(std::memory_order_acquire);
  size_t len = std::min(n, static_cast<size_t>(head - tail));
  if (len == 0) return 0;
  size_t pos = static_cast<size_t>(tail % cap_);
  size_t first = std::min(len, cap_ - pos);
  std::memcpy(dst, in_data_ + pos, first);
  if (len > first) std::memcpy(static_cast<char*>(dst) + first, in_data_, len - first);
  in_.tail.store(tail + len, std::memory_order_release);
  return len;
}

void ShmConnection::check_peer(bool reading) {
  try {
    host_.check_peer(peer_local_);
  } catch (const PeerError&) {
    // What the peer wrote before it went is still delivered to a reader, as TCP delivers bytes
    // before the FIN: its flag or its death comes after its last write, so the ring is read first.
    if (reading && in_.head.load(std::memory_order_acquire) != in_.tail.load(std::memory_order_relaxed)) return;
    throw;
  }
}

class ShmTransport : public Transport {
 public:
  explicit ShmTransport(const TransportSetup& setup) : rank_(setup.id.rank), names_(setup.names) {}
  std::string address() const override { return ""; }  // found by host, not by address
  void start(const TransportSetup& setup, const std::vector<PeerEndpoint>& peers) override;
  bool can_connect(int peer) const override { return host_ && host_->local_index_of(peer) >= 0; }
  std::string why_not(int peer) const override;
  std::unique_ptr<Connection> connect(int peer, int channel, Deadline) override {
    return std::make_unique<ShmConnection>(peer, *host_, channel);
  }
  HostMemory* host_memory() override { return host_.get(); }
  void announce_failure(const std::string& why) override {
    if (host_) host_->mark_aborted(why);  // local peers look there while they wait on us
  }

 private:
  int rank_;
  std::vector<std::string> names_;
  std::vector<PeerEndpoint> peers_;
  std::unique_ptr<ShmHost> host_;  // null when alone on the host or shared memory failed
};

void ShmTransport::start(const TransportSetup& setup, const std::vector<PeerEndpoint>& peers) {
  peers_ = peers;
  std::vector<int> local;
  std::vector<std::string> names;
  for (int p = 0; p < static_cast<int>(peers.size()); ++p) {
    if (!peers[p].uses || peers[p].host_id != peers[rank_].host_id) continue;
    local.push_back(p);
    names.push_back(names_[p]);
  }
  if (local.size() > 1)
    host_ = ShmHost::create(setup.store, setup.id.comm_id, rank_, local, std::move(names), setup.deadline);
}

std::string ShmTransport::why_not(int peer) const {
  if (peers_[peer].host_id != peers_[rank_].host_id) return "some ranks of this group are on other hosts";
  if (!peers_[peer].uses) return names_[peer] + " does not use shm (PLEXUS_TRANSPORTS differs there)";
  return "shared memory is not usable here (see the warning above)";
}

}  // namespace

std::unique_ptr<Transport> open_shm(const TransportSetup& setup) { return std::make_unique<ShmTransport>(setup); }

}  // namespace plexus
