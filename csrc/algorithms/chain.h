#pragma once

#include "algorithms/algorithm.h"

namespace plexus {

void chain_broadcast(OpContext& ctx, const CollArgs& args);
void chain_reduce(OpContext& ctx, const CollArgs& args);

}  // namespace plexus
