// Who a rank is in a communicator, as agreed in the rendezvous: the communicator's random id
// and secret (a connecting peer proves it knows them), or, in an authenticated job, the job
// token (a connecting peer proves it holds it, see auth.h); and the rank's number and group size.
#pragma once

#include <array>
#include <cstdint>
#include <string>

namespace plexus {

struct CommIdentity {
  uint64_t comm_id = 0;
  std::array<uint8_t, 32> secret{};  // zeros in an authenticated job: it is not published
  std::string token;                 // the job token, "" when the job is unauthenticated
  int rank = 0;
  int size = 1;
};

}  // namespace plexus
