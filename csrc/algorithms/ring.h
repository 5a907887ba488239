#pragma once

#include "algorithms/algorithm.h"

namespace plexus {

void ring_all_reduce(OpContext& ctx, const CollArgs& args);
void ring_all_gather(OpContext& ctx, const CollArgs& args);
void ring_reduce_scatter(OpContext& ctx, const CollArgs& args);
double ring_cost(CollKind kind, double bytes, const GroupShape& g, const CostModel& m);

}  // namespace plexus
