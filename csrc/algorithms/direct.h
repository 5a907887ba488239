#pragma once

#include "algorithms/algorithm.h"

namespace plexus {

void direct_gather(OpContext& ctx, const CollArgs& args);
void direct_scatter(OpContext& ctx, const CollArgs& args);
void direct_all_to_all(OpContext& ctx, const CollArgs& args);
double direct_cost(CollKind kind, double bytes, const GroupShape& g, const CostModel& m);

}  // namespace plexus
