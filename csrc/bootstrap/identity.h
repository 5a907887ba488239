// Who a rank is in a communicator, as agreed in the rendezvous: the communicator's random id
// and secret (a connecting peer proves it knows them), and the rank's number and group size.
#pragma once

#include <array>
#include <cstdint>

namespace plexus {

struct CommIdentity {
  uint64_t comm_id = 0;
  std::array<uint8_t, 32> secret{};
  int rank = 0;
  int size = 1;
};

}  // namespace plexus
