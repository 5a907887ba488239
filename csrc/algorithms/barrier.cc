// Dissemination barrier: in round k every rank signals rank+2^k and waits for rank-2^k; after
// ceil(log2 N) rounds every rank has heard, indirectly, from all others.
#include "algorithms/barrier.h"

#include "algorithms/common.h"
#include "core/exchange.h"

namespace plexus {

double dissemination_cost(CollKind, double, const GroupShape& g, const CostModel& m) {
  return ceil_log2(g.ranks) * stream_link(g, m).alpha_s;
}

void dissemination_barrier(OpContext& ctx, const CollArgs&) {
  const int n = ctx.size(), r = ctx.rank();
  if (n == 1) return;
  Exchange ex(ctx);
  int prev_id = -1;
  for (int dist = 1; dist < n; dist *= 2) {
    ex.send(wrap_rank(r + dist, n), nullptr, 0, prev_id);
    prev_id = ex.recv(wrap_rank(r - dist, n), nullptr, 0);
  }
  ex.run();
}

}  // namespace plexus
