#pragma once

#include "algorithms/algorithm.h"

namespace plexus {

bool hierarchical_applicable(const GroupShape& g);
double hierarchical_cost(CollKind kind, double bytes, const GroupShape& g, const CostModel& m);
void hierarchical_all_reduce(OpContext& ctx, const CollArgs& args);

}  // namespace plexus
