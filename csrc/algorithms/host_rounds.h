// The round protocol of the intra-host (shared-memory) algorithms. In each round every local
// rank may publish data in its staging buffer, read what the others published, publish a
// result, and read the others' results; counters in each segment say how far each rank got.
// Staging buffers alternate between two parities, so a rank can fill round g+1 while slower
// ranks still read round g.
#pragma once

#include <atomic>
#include <cstdint>

#include "core/op_context.h"
#include "transport/host_memory.h"

namespace plexus {

class HostRounds {
 public:
  explicit HostRounds(OpContext& ctx);

  int size() const { return n_; }
  int me() const { return me_; }
  // Starts the next round once every rank has finished reading this rank's staging buffer of
  // the same parity (two rounds ago); returns that buffer.
  char* begin();
  // This rank's staging data for the round is complete.
  void publish_input();
  // Waits for the input of `local` (-1: of every rank) and checks it belongs to the same call.
  void wait_input(int local = -1);
  void publish_result();
  void wait_result();
  // This rank is done reading the others' buffers of this round.
  void finish();
  // Waits until every rank has finished this round (nobody reads this rank's memory any more).
  void wait_finished();
  int pid_of(int local) const { return host_.pid_of(local); }
  // Throws PeerError if local peer `local` failed, aborted or left (unless it finished this call).
  void check(int local) { check_peer(local); }
  const std::string& name_of(int local) const { return host_.name_of(local); }

  char* staging(int local) const { return host_.staging(local, parity_); }
  size_t staging_bytes() const { return host_.staging_bytes(); }

 private:
  void wait_all(RoundCounter c, uint64_t target, int only = -1);
  // Throws if local peer q failed, aborted or left, unless it finished this call before it left.
  void check_peer(int q);
  void check_stamp(int local);

  OpContext& ctx_;
  HostMemory& host_;
  int n_, me_;
  uint64_t round_ = 0;
  int parity_ = 0;
};

}  // namespace plexus
