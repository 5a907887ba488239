#pragma once

#include "algorithms/algorithm.h"

namespace plexus {

// True when every rank of the communicator is on this host with shared memory set up.
bool shm_applicable(const Communicator& comm);

void shm_all_reduce_oneshot(OpContext& ctx, const CollArgs& args);
void shm_all_reduce_twoshot(OpContext& ctx, const CollArgs& args);
void shm_all_gather(OpContext& ctx, const CollArgs& args);
void shm_reduce_scatter(OpContext& ctx, const CollArgs& args);
void shm_broadcast(OpContext& ctx, const CollArgs& args);
void shm_reduce(OpContext& ctx, const CollArgs& args);
void shm_barrier(OpContext& ctx, const CollArgs& args);

}  // namespace plexus
