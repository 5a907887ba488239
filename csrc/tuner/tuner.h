// Chooses the algorithm of each collective call: PLEXUS_ALGO overrides first, then simple
// rules per topology and size (the cost model comes with the topology issue).
//
// PLEXUS_ALGO uses UCC's syntax: entries "collective[:lo-hi]:@algorithm" joined by '#', e.g.
// "allreduce:0-64K:@shm_oneshot#allreduce:64K-inf:@ring#broadcast:@chain".
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "algorithms/algorithm.h"

namespace plexus {

struct AlgoOverride {
  CollKind kind;
  size_t lo = 0, hi = SIZE_MAX;  // byte range [lo, hi)
  std::string name;
};

// Parses a PLEXUS_ALGO value; throws InvalidArgument naming the bad part.
std::vector<AlgoOverride> parse_algo_overrides(const std::string& spec);

const Algorithm& choose_algorithm(CollKind kind, size_t bytes, const Communicator& comm);

}  // namespace plexus
