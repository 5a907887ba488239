#pragma once

#include <functional>

#include "algorithms/algorithm.h"
#include "algorithms/common.h"

namespace plexus {

// True when every rank of the group is on one host with shared memory set up (or alone).
bool shm_applicable(const GroupShape& g);
// The all_reduce input to read: for PREMUL_SUM the input scaled into the output once (reduced
// from there as a SUM), else the input itself.
const char* premultiplied(const CollArgs& args);
double shm_cost(CollKind kind, double bytes, const GroupShape& g, const CostModel& m);
double shm_oneshot_cost(CollKind kind, double bytes, const GroupShape& g, const CostModel& m);
double shm_twoshot_cost(CollKind kind, double bytes, const GroupShape& g, const CostModel& m);

void shm_all_reduce_oneshot(OpContext& ctx, const CollArgs& args);
void shm_all_reduce_twoshot(OpContext& ctx, const CollArgs& args);
// Two-shot rounds among the ranks of this host, with `between` run on this rank's reduced
// slice of each round before the others copy it (the hierarchical all-reduce goes across hosts
// there). `red` says how the host's ranks combine.
void shm_twoshot_rounds(OpContext& ctx, const CollArgs& args, const Reduction& red,
                        const std::function<void(char* slice, size_t elems)>& between);
void shm_all_gather(OpContext& ctx, const CollArgs& args);
void shm_reduce_scatter(OpContext& ctx, const CollArgs& args);
void shm_broadcast(OpContext& ctx, const CollArgs& args);
void shm_reduce(OpContext& ctx, const CollArgs& args);
void shm_barrier(OpContext& ctx, const CollArgs& args);

}  // namespace plexus
