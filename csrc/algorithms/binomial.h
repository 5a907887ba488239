#pragma once

#include <vector>

#include "algorithms/algorithm.h"

namespace plexus {

// Binomial tree rooted at `root`: rank v (counted from the root) gets data from v minus its
// highest bit and passes it to v + 2^k for every 2^k above that bit.
struct BinomialLinks {
  int parent = -1;
  std::vector<int> children;  // largest subtree first
};
BinomialLinks binomial_links(int n, int rank, int root);

void binomial_broadcast(OpContext& ctx, const CollArgs& args);
void binomial_reduce(OpContext& ctx, const CollArgs& args);
double binomial_cost(CollKind kind, double bytes, const GroupShape& g, const CostModel& m);

}  // namespace plexus
