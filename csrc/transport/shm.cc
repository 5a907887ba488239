#include "transport/shm.h"

#include <algorithm>
#include <cstring>

namespace plexus {

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

void ShmConnection::check_peer() { host_.check_peer(peer_local_); }

}  // namespace plexus
