// What every algorithm gets, and the table that names them (read by the tuner and PLEXUS_ALGO).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "algorithms/cost.h"
#include "base/types.h"
#include "core/op_context.h"

namespace plexus {

// Buffers of one collective call. `count` is elements per block: the whole buffer for
// all_reduce/broadcast/reduce, one rank's share for all_gather/reduce_scatter/gather/scatter.
struct CollArgs {
  std::vector<const void*> inputs;  // 1, or one block per rank (reduce_scatter, scatter, all_to_all)
  std::vector<void*> outputs;       // 1, or one block per rank (all_gather, gather, all_to_all)
  size_t count = 0;
  // all_to_all only: elements of each input / output block (blocks may differ in size).
  std::vector<size_t> input_counts, output_counts;
  DType dtype = DType::kUInt8;
  RedOp op = RedOp::kNone;
  double factor = 1.0;  // PREMUL_SUM's factor
  int root = -1;
};

using AlgorithmFn = void (*)(OpContext& ctx, const CollArgs& args);
// Predicted seconds for `bytes` (the whole buffer; one rank's block for all_gather,
// reduce_scatter, gather, scatter) on a group of this shape.
using CostFn = double (*)(CollKind kind, double bytes, const GroupShape& g, const CostModel& m);

struct Algorithm {
  const char* name;
  CollKind kind;
  AlgorithmFn run;
  CostFn cost;
  const char* summary;
  // Whether it can run on a group of this shape (nullptr: always).
  bool (*applicable)(const GroupShape& g) = nullptr;

  bool can_run(const GroupShape& g) const { return !applicable || applicable(g); }
};

// Every registered algorithm, in preference order per collective.
const std::vector<Algorithm>& algorithm_table();
// The algorithm called `name` for `kind`; throws InvalidArgument listing the valid names.
const Algorithm& find_algorithm(CollKind kind, const std::string& name);

}  // namespace plexus
