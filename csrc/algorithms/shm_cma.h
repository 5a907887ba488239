// All-reduce on one host by cross-memory attach: each rank reads its peers' inputs straight
// from their processes (process_vm_readv) instead of through a staging copy in shared memory.
#pragma once

#include "algorithms/algorithm.h"

namespace plexus {

// One host with shared memory, and every local rank can read every other's memory.
bool cma_applicable(const GroupShape& g);
double shm_cma_cost(CollKind kind, double bytes, const GroupShape& g, const CostModel& m);
void shm_all_reduce_cma(OpContext& ctx, const CollArgs& args);

}  // namespace plexus
