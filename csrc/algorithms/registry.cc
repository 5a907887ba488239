// The one table of algorithms. Adding an algorithm: one new file and one line here.
#include "algorithms/algorithm.h"
#include "algorithms/barrier.h"
#include "algorithms/chain.h"
#include "algorithms/ring.h"
#include "core/error.h"

namespace plexus {

const std::vector<Algorithm>& algorithm_table() {
  static const std::vector<Algorithm> table = {
      {"ring", CollKind::kAllReduce, ring_all_reduce, "reduce-scatter + all-gather around a ring"},
      {"ring", CollKind::kAllGather, ring_all_gather, "pipelined ring"},
      {"ring", CollKind::kReduceScatter, ring_reduce_scatter, "pipelined ring"},
      {"chain", CollKind::kBroadcast, chain_broadcast, "pipelined chain from the root"},
      {"chain", CollKind::kReduce, chain_reduce, "pipelined chain ending at the root"},
      {"dissemination", CollKind::kBarrier, dissemination_barrier, "log2(N) rounds of signals"},
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
