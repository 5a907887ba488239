// The one table of algorithms. Adding an algorithm: one new file and one line here.
#include "algorithms/algorithm.h"
#include "algorithms/barrier.h"
#include "algorithms/binomial.h"
#include "algorithms/chain.h"
#include "algorithms/direct.h"
#include "algorithms/hierarchical.h"
#include "algorithms/rhd.h"
#include "algorithms/ring.h"
#include "algorithms/shm_cma.h"
#include "algorithms/shm_direct.h"
#include "algorithms/tree.h"
#include "base/error.h"

namespace plexus {

const std::vector<Algorithm>& algorithm_table() {
  static const std::vector<Algorithm> table = {
      // all_reduce
      {"ring", CollKind::kAllReduce, ring_all_reduce, ring_cost, "reduce-scatter + all-gather around a ring"},
      {"tree", CollKind::kAllReduce, double_tree_all_reduce, double_tree_cost,
       "two complementary binary trees (NCCL's)"},
      {"rhd", CollKind::kAllReduce, rhd_all_reduce, rhd_cost, "recursive halving-doubling (Rabenseifner)"},
      {"shm_oneshot", CollKind::kAllReduce, shm_all_reduce_oneshot, shm_oneshot_cost,
       "one host: every rank reduces all inputs from shared memory", shm_applicable},
      {"shm_twoshot", CollKind::kAllReduce, shm_all_reduce_twoshot, shm_twoshot_cost,
       "one host: reduce-scatter then all-gather by direct shared-memory reads", shm_applicable},
      {"shm_cma", CollKind::kAllReduce, shm_all_reduce_cma, shm_cma_cost,
       "one host: each rank reads its peers' buffers (process_vm_readv), no staging copy", cma_applicable},
      {"hierarchical", CollKind::kAllReduce, hierarchical_all_reduce, hierarchical_cost,
       "shared memory within hosts, all-reduce of 1/L of the data across hosts", hierarchical_applicable},
      // all_gather
      {"ring", CollKind::kAllGather, ring_all_gather, ring_cost, "pipelined ring"},
      {"rhd", CollKind::kAllGather, rhd_all_gather, rhd_cost, "recursive doubling"},
      {"shm_direct", CollKind::kAllGather, shm_all_gather, shm_cost, "one host: direct shared-memory reads",
       shm_applicable},
      // reduce_scatter
      {"ring", CollKind::kReduceScatter, ring_reduce_scatter, ring_cost, "pipelined ring"},
      {"rhd", CollKind::kReduceScatter, rhd_reduce_scatter, rhd_cost, "recursive halving"},
      {"shm_direct", CollKind::kReduceScatter, shm_reduce_scatter, shm_cost,
       "one host: direct shared-memory reads", shm_applicable},
      // broadcast
      {"chain", CollKind::kBroadcast, chain_broadcast, chain_cost, "pipelined chain from the root"},
      {"binomial", CollKind::kBroadcast, binomial_broadcast, binomial_cost, "binomial tree, log2(N) levels"},
      {"shm_direct", CollKind::kBroadcast, shm_broadcast, shm_cost, "one host: direct shared-memory reads",
       shm_applicable},
      // reduce
      {"chain", CollKind::kReduce, chain_reduce, chain_cost, "pipelined chain ending at the root"},
      {"binomial", CollKind::kReduce, binomial_reduce, binomial_cost, "binomial tree, log2(N) levels"},
      {"shm_direct", CollKind::kReduce, shm_reduce, shm_cost, "one host: direct shared-memory reads",
       shm_applicable},
      // barrier
      {"dissemination", CollKind::kBarrier, dissemination_barrier, dissemination_cost, "log2(N) rounds of signals"},
      {"shm_direct", CollKind::kBarrier, shm_barrier, shm_cost, "one host: counters in shared memory",
       shm_applicable},
      // gather, scatter, all_to_all
      {"direct", CollKind::kGather, direct_gather, direct_cost, "every rank sends to the root at once"},
      {"direct", CollKind::kScatter, direct_scatter, direct_cost, "the root sends to every rank at once"},
      {"direct", CollKind::kAllToAll, direct_all_to_all, direct_cost, "every pair exchanges at once"},
  };
  return table;
}

const Algorithm& find_algorithm(CollKind kind, const std::string& name) {
  std::string known;
  for (const auto& a : algorithm_table()) {
    if (a.kind != kind) continue;
    if (name == a.name) return a;
    known += std::string(known.empty() ? "" : ", ") + a.name;
  }
  throw InvalidArgument("unknown " + std::string(coll_name(kind)) + " algorithm '" + name +
                        "'; known: " + known);
}

}  // namespace plexus
