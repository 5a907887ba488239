// Shared-memory transport: a byte stream to a peer on this host through a ring in the peer's
// segment (we write) and a ring in ours (we read). No file descriptor: the progress engine
// polls it by calling read_some/write_some.
#pragma once

#include "transport/connection.h"
#include "transport/shm_segment.h"

namespace plexus {

class ShmConnection : public Connection {
 public:
  // `channel`: 0 for collectives, 1 for point-to-point (see ShmLayout).
  ShmConnection(int peer, ShmHost& host, int channel);
  size_t write_some(const iovec* iov, int iovcnt) override;
  size_t read_some(void* dst, size_t n) override;
  int fd() const override { return -1; }
  void shutdown() override {}
  void check_peer() override;
  const char* transport_name() const override { return "shm"; }

 private:
  ShmHost& host_;
  int peer_local_;
  RingHeader& out_;  // in the peer's segment
  char* out_data_;
  RingHeader& in_;   // in ours
  char* in_data_;
  size_t cap_;
};

}  // namespace plexus
