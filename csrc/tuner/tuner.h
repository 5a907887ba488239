// Chooses the algorithm of each collective call: PLEXUS_ALGO overrides first, then the
// cheapest algorithm under the cost model (algorithms/cost.h) for the group's shape.
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

// "all_reduce", "allreduce", "bcast" ... -> the collective; throws InvalidArgument.
CollKind parse_collective(const std::string& name);

// Parses a PLEXUS_ALGO value; throws InvalidArgument naming the bad part.
std::vector<AlgoOverride> parse_algo_overrides(const std::string& spec);

struct Prediction {
  const Algorithm* algorithm;
  double seconds;   // predicted
  bool runnable;    // applicable to this shape
};

// Every algorithm of `kind` with its predicted time, in registry order.
std::vector<Prediction> predict_all(CollKind kind, double bytes, const GroupShape& g, const CostModel& m);
// The cheapest runnable algorithm (no overrides): what `plexus info` shows for a described machine.
const Algorithm& cheapest(CollKind kind, double bytes, const GroupShape& g, const CostModel& m);
// What a live group of shape `g` runs: a PLEXUS_ALGO override if one covers `bytes` (unless
// the group is `internal`, part of another group's algorithm), else the cheapest under `m`.
// Set `why` to get the reason in words.
const Algorithm& choose_algorithm(CollKind kind, size_t bytes, const GroupShape& g, const CostModel& m,
                                  bool internal, std::string* why = nullptr);

}  // namespace plexus
