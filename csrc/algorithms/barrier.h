#pragma once

#include "algorithms/algorithm.h"

namespace plexus {

void dissemination_barrier(OpContext& ctx, const CollArgs& args);
double dissemination_cost(CollKind kind, double bytes, const GroupShape& g, const CostModel& m);

}  // namespace plexus
