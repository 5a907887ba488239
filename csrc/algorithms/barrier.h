#pragma once

#include "algorithms/algorithm.h"

namespace plexus {

void dissemination_barrier(OpContext& ctx, const CollArgs& args);

}  // namespace plexus
