#pragma once

#include "algorithms/algorithm.h"

namespace plexus {

void chain_broadcast(OpContext& ctx, const CollArgs& args);
void chain_reduce(OpContext& ctx, const CollArgs& args);
double chain_cost(CollKind kind, double bytes, const GroupShape& g, const CostModel& m);

}  // namespace plexus
