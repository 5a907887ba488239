// A connection: an ordered, reliable byte stream to one peer, as a transport opens it
// (transport/transport.h). Algorithms reach it only through core/exchange.h; nothing above this
// layer sees a socket.
#pragma once

#include <poll.h>
#include <sys/uio.h>

#include <cstddef>
#include <string>

namespace plexus {

class Connection {
 public:
  // `peer` is the peer's rank in the communicator; `peer_name` how messages call it
  // (e.g. "rank 5": the global rank, for sub-groups).
  Connection(int peer, std::string peer_name) : peer_(peer), peer_name_(std::move(peer_name)) {}
  virtual ~Connection() = default;

  // Non-blocking. Return the number of bytes moved, 0 when nothing can move right now.
  // Throw PeerError when the connection is broken or closed by the peer.
  virtual size_t write_some(const iovec* iov, int iovcnt) = 0;
  virtual size_t read_some(void* dst, size_t n) = 0;

  // A descriptor that poll() reports ready for this connection, or -1 if it must be polled by
  // calling read_some/write_some (e.g. shared memory).
  virtual int fd() const = 0;
  // The poll() events to wait for on fd() when the caller wants to read and/or write (a
  // descriptor that only ever becomes readable, as UCX's, says POLLIN for both).
  virtual short poll_events(bool reading, bool writing) const {
    return static_cast<short>((reading ? POLLIN : 0) | (writing ? POLLOUT : 0));
  }
  // Ends the stream: the peer sees end-of-file after what was already written.
  virtual void shutdown() = 0;
  // For connections without a descriptor: throws PeerError if the peer failed or died (a
  // socket reports that by itself). `reading`: the caller will read what the peer wrote before
  // it went, so that comes first (as a socket delivers its bytes before the end of the stream).
  virtual void check_peer(bool reading) {}

  int peer() const { return peer_; }
  const std::string& peer_name() const { return peer_name_; }
  // Bytes of a partly written frame still to send: an error frame can only follow once the
  // frame is complete.
  size_t frame_left = 0;

 private:
  int peer_;
  std::string peer_name_;
};

}  // namespace plexus
