#pragma once

#include "algorithms/algorithm.h"

namespace plexus {

void direct_gather(OpContext& ctx, const CollArgs& args);
void direct_scatter(OpContext& ctx, const CollArgs& args);
void direct_all_to_all(OpContext& ctx, const CollArgs& args);

}  // namespace plexus
