// What the ranks of a new communicator agree on through the store before they talk directly:
// a random id and secret, and every rank's host and the addresses its transports listen on.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "bootstrap/identity.h"
#include "bootstrap/store.h"

namespace plexus {

struct Endpoint {
  std::string host_id;  // equal for ranks on the same host
  // By transport name: what peers need to reach this rank through it (may be empty). Only the
  // transports this rank uses appear. Names hold no '|' or '=', addresses no '|'.
  std::map<std::string, std::string> addresses;
};

// Rank 0 draws the id and secret and publishes them; the others read them. Also checks that
// every rank agrees on the size and that no rank number is claimed twice.
CommIdentity agree_identity(Store& store, int rank, int size, Deadline deadline);
std::vector<Endpoint> exchange_endpoints(Store& store, int rank, int size, const Endpoint& mine,
                                         Deadline deadline);
// Returns once all `size` ranks have called it with the same name. Rank 0 (which usually hosts
// the store) returns only after every rank is done with the store for this barrier, so it may
// shut the store down right after.
void store_barrier(Store& store, const std::string& name, int rank, int size, Deadline deadline);

// Equal for ranks that share a host: hostname + boot id + network namespace, or PLEXUS_HOST_ID.
std::string this_host_id();

}  // namespace plexus
