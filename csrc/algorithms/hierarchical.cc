// Hierarchical all-reduce for several hosts with several ranks each: reduce-scatter among the
// ranks of a host through shared memory, all-reduce each slice across hosts (rank i of every
// host together, over the network, with whatever algorithm the tuner picks for that group), then
// all-gather within the host. The network carries 1/L of the data per rank instead of all of it.
// It is the two-shot shared-memory all-reduce with the cross-host step in its middle.
#include "algorithms/hierarchical.h"

#include <algorithm>

#include "algorithms/common.h"
#include "algorithms/rhd.h"
#include "algorithms/ring.h"
#include "algorithms/shm_direct.h"
#include "algorithms/tree.h"
#include "reduce/cpu_reduce.h"

namespace plexus {

bool hierarchical_applicable(const GroupShape& g) {
  return g.hosts > 1 && g.uniform && g.local > 1 && g.shm;
}

double hierarchical_cost(CollKind kind, double bytes, const GroupShape& g, const CostModel& m) {
  GroupShape cross;
  cross.ranks = cross.hosts = g.hosts;
  const double slice = bytes / g.local;
  const double across = std::min({ring_cost(kind, slice, cross, m), rhd_cost(kind, slice, cross, m),
                                  double_tree_cost(kind, slice, cross, m)});
  GroupShape host = g;
  host.ranks = g.local;
  host.hosts = 1;
  return shm_twoshot_cost(kind, bytes, host, m) + across;
}

void hierarchical_all_reduce(OpContext& ctx, const CollArgs& args) {
  // Within the host: plain sums (AVG divides once the whole group is in; PREMUL_SUM's inputs are
  // scaled by the rounds themselves).
  const bool sums = args.op == RedOp::kAvg || args.op == RedOp::kPremulSum;
  const Reduction local{sums ? RedOp::kSum : args.op, 1.0};
  const double post = args.op == RedOp::kAvg ? 1.0 / ctx.size() : 1.0;
  const DType dtype = args.dtype;
  shm_twoshot_rounds(ctx, args, local, [&](char* slice, size_t elems) {
    ctx.all_reduce_across_hosts(slice, elems, dtype, local.kernel_op);
    if (post != 1.0) cpu::scale(dtype, slice, slice, elems, post);
  });
}

}  // namespace plexus
