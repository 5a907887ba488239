#pragma once

#include "algorithms/algorithm.h"

namespace plexus {

void rhd_all_reduce(OpContext& ctx, const CollArgs& args);
void rhd_reduce_scatter(OpContext& ctx, const CollArgs& args);
void rhd_all_gather(OpContext& ctx, const CollArgs& args);
double rhd_cost(CollKind kind, double bytes, const GroupShape& g, const CostModel& m);

}  // namespace plexus
