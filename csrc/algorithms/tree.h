#pragma once

#include "algorithms/algorithm.h"

namespace plexus {

// Parent and children of `rank` in a binary tree over `n` ranks (-1: none).
struct TreeLinks {
  int parent = -1;
  int child[2] = {-1, -1};
};

// NCCL's pair of binary trees: in the first, rank 0 is the root and the tree is built on the
// bits of the ranks; the second mirrors it (even n) or shifts it by one (odd n), so that the
// leaves of one are the inner nodes of the other and every rank's links carry equal load.
TreeLinks first_tree(int n, int rank);
TreeLinks second_tree(int n, int rank);

void double_tree_all_reduce(OpContext& ctx, const CollArgs& args);
double double_tree_cost(CollKind kind, double bytes, const GroupShape& g, const CostModel& m);

}  // namespace plexus
