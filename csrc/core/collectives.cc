// The checks of a collective call and its hand-off to the communicator.
#include "core/collectives.h"

#include <cmath>

#include "base/error.h"
#include "tuner/tuner.h"

namespace plexus {

namespace {

size_t expected_inputs(CollKind kind, int n) {
  return kind == CollKind::kReduceScatter || kind == CollKind::kScatter || kind == CollKind::kAllToAll ? n : 1;
}
size_t expected_outputs(CollKind kind, int n) {
  return kind == CollKind::kAllGather || kind == CollKind::kGather || kind == CollKind::kAllToAll ? n : 1;
}
bool reduces(CollKind k) {
  return k == CollKind::kAllReduce || k == CollKind::kReduce || k == CollKind::kReduceScatter;
}
bool rooted(CollKind k) {
  return k == CollKind::kBroadcast || k == CollKind::kReduce || k == CollKind::kGather ||
         k == CollKind::kScatter;
}

// The call's signature, once its arguments are checked (and normalised: root, op and count where
// the kind does not use them).
Signature checked_call(Communicator& comm, CollKind kind, CollArgs& args) {
  const int n = comm.size();
  // Built only for an error: this runs on every call.
  auto what_text = [&] { return std::string(coll_name(kind)) + " on " + comm.name_of(comm.rank()); };
  if (static_cast<size_t>(args.dtype) >= static_cast<size_t>(DType::kCount))
    throw TypeMismatch(what_text() + ": unsupported dtype");
  if (reduces(kind)) {
    if (std::string problem = op_dtype_problem(args.op, args.dtype); !problem.empty())
      throw TypeMismatch(what_text() + ": " + problem);
    if (args.op == RedOp::kPremulSum && !std::isfinite(args.factor))
      throw InvalidArgument(what_text() + ": PREMUL_SUM factor must be finite");
  } else {
    args.op = RedOp::kNone;
  }
  if (rooted(kind)) {
    if (args.root < 0 || args.root >= n)
      throw InvalidArgument(what_text() + ": root " + std::to_string(args.root) +
                            " is not a rank of this group (size " + std::to_string(n) + ")");
  } else {
    args.root = -1;
  }
  if (kind == CollKind::kBarrier) {
    args.count = 0;
    args.dtype = DType::kUInt8;
  } else if (args.inputs.size() != expected_inputs(kind, n) ||
             args.outputs.size() != expected_outputs(kind, n)) {
    throw InvalidArgument(what_text() + ": wrong number of buffers for a group of " + std::to_string(n));
  }
  if (kind == CollKind::kAllToAll) {
    if (args.input_counts.size() != static_cast<size_t>(n) || args.output_counts.size() != static_cast<size_t>(n))
      throw InvalidArgument(what_text() + ": all_to_all needs one input and one output count per rank");
    if (args.input_counts[comm.rank()] != args.output_counts[comm.rank()])
      throw InvalidArgument(what_text() + ": this rank sends itself " + std::to_string(args.input_counts[comm.rank()]) +
                            " elements but expects " + std::to_string(args.output_counts[comm.rank()]));
    args.count = 0;  // per-peer sizes differ; each frame's size is checked instead
  }
  Signature sig;
  sig.kind = kind;
  sig.dtype = args.dtype;
  sig.op = args.op;
  sig.root = args.root;
  sig.count = args.count;
  return sig;
}

}  // namespace

std::shared_ptr<Work> submit_collective(Communicator& comm, CollKind kind, CollArgs args,
                                        bool blocking) {
  const Signature sig = checked_call(comm, kind, args);
  const Algorithm& algo = choose_algorithm(kind, args.count * dtype_size(args.dtype), comm.shape(),
                                          comm.cost_model(), comm.internal());
  AlgorithmFn run = algo.run;
  return comm.submit(sig, [run, args = std::move(args)](OpContext& ctx) { run(ctx, args); }, algo.name, blocking);
}

std::shared_ptr<Work> submit_port_collective(Communicator& comm, CollKind kind, CollArgs args, const PortPlace& place,
                                             bool blocking) {
  const Signature sig = checked_call(comm, kind, args);
  const std::string what = std::string(coll_name(kind)) + " on " + comm.name_of(comm.rank());
  if (kind == CollKind::kBarrier) throw InvalidArgument(what + ": a barrier has no arrays to send through ports");
  for (int p = 0; p < comm.size(); ++p)
    if (p != comm.rank() && !comm.direct().reaches(p, place.memory))
      throw InvalidArgument(what + ": the message port to " + comm.name_of(p) + " does not move this memory");
  const size_t need = port_flat_scratch_bytes(kind, args.count, args.dtype, comm.size(), comm.rank(), args.root);
  if (place.scratch_bytes < need || (need && !place.scratch))
    throw InvalidArgument(what + ": needs " + std::to_string(need) + " bytes of working memory, got " +
                          std::to_string(place.scratch_bytes));
  return comm.submit(sig, [args = std::move(args), place](OpContext& ctx) { port_flat(ctx, args, place); },
                     "port_flat", blocking);
}

}  // namespace plexus
