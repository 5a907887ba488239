// The one table of algorithms. Adding an algorithm: one new file and one line here.
#include "algorithms/algorithm.h"
#include "algorithms/barrier.h"
#include "algorithms/binomial.h"
#include "algorithms/chain.h"
#include "algorithms/direct.h"
#include "algorithms/rhd.h"
#include "algorithms/ring.h"
#include "algorithms/shm_direct.h"
#include "algorithms/tree.h"
#include "core/error.h"

namespace plexus {

const std::vector<Algorithm>& algorithm_table() {
  static const std::vector<Algorithm> table = {
      {"ring", CollKind::kAllReduce, ring_all_reduce, "reduce-scatter + all-gather around a ring"},
      {"tree", CollKind::kAllReduce, double_tree_all_reduce, "two complementary binary trees (NCCL's)"},
      {"rhd", CollKind::kAllReduce, rhd_all_reduce, "recursive halving-doubling (Rabenseifner)"},
      {"shm_oneshot", CollKind::kAllReduce, shm_all_reduce_oneshot,
       "one host: every rank reduces all inputs from shared memory", shm_applicable},
      {"shm_twoshot", CollKind::kAllReduce, shm_all_reduce_twoshot,
       "one host: reduce-scatter then all-gather by direct shared-memory reads", shm_applicable},
      {"ring", CollKind::kAllGather, ring_all_gather, "pipelined ring"},
      {"rhd", CollKind::kAllGather, rhd_all_gather, "recursive doubling"},
      {"shm_direct", CollKind::kAllGather, shm_all_gather, "one host: direct shared-memory reads",
       shm_applicable},
      {"ring", CollKind::kReduceScatter, ring_reduce_scatter, "pipelined ring"},
      {"rhd", CollKind::kReduceScatter, rhd_reduce_scatter, "recursive halving"},
      {"shm_direct", CollKind::kReduceScatter, shm_reduce_scatter,
       "one host: direct shared-memory reads", shm_applicable},
      {"chain", CollKind::kBroadcast, chain_broadcast, "pipelined chain from the root"},
      {"binomial", CollKind::kBroadcast, binomial_broadcast, "binomial tree, log2(N) levels"},
      {"shm_direct", CollKind::kBroadcast, shm_broadcast, "one host: direct shared-memory reads",
       shm_applicable},
      {"chain", CollKind::kReduce, chain_reduce, "pipelined chain ending at the root"},
      {"binomial", CollKind::kReduce, binomial_reduce, "binomial tree, log2(N) levels"},
      {"shm_direct", CollKind::kReduce, shm_reduce, "one host: direct shared-memory reads",
       shm_applicable},
      {"dissemination", CollKind::kBarrier, dissemination_barrier, "log2(N) rounds of signals"},
      {"shm_direct", CollKind::kBarrier, shm_barrier, "one host: counters in shared memory",
       shm_applicable},
      {"direct", CollKind::kGather, direct_gather, "every rank sends to the root at once"},
      {"direct", CollKind::kScatter, direct_scatter, "the root sends to every rank at once"},
      {"direct", CollKind::kAllToAll, direct_all_to_all, "every pair exchanges at once"},
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
