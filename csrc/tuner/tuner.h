// Chooses the algorithm for each collective call. For now: the first registered algorithm for
// the collective (the cost model comes with the topology issue).
#pragma once

#include <cstddef>

#include "algorithms/algorithm.h"

namespace plexus {

const Algorithm& choose_algorithm(CollKind kind, size_t bytes, int nranks);

}  // namespace plexus
