// Block layout, chunking, reduction bookkeeping and link costs shared by the algorithms.
#include "algorithms/common.h"

#include <algorithm>
#include <cstring>

#include "base/config.h"
#include "reduce/cpu_reduce.h"

namespace plexus {

Chunks::Chunks(size_t count, size_t elem_size) {
  elems = chunk_bytes() / elem_size;
  if (elems == 0) elems = 1;
  n = count == 0 ? 1 : (count + elems - 1) / elems;
}

Reduction plan_reduction(const CollArgs& args, int nranks) {
  switch (args.op) {
    case RedOp::kAvg:
      return {RedOp::kSum, 1.0 / nranks};
    case RedOp::kPremulSum:
      return {RedOp::kSum, 1.0};
    default:
      return {args.op, 1.0};
  }
}

std::vector<const void*> scaled_inputs(const CollArgs& args, size_t elems_per_input,
                                       std::vector<char>& storage) {
  if (args.op != RedOp::kPremulSum) return args.inputs;
  const size_t bytes = elems_per_input * dtype_size(args.dtype);
  storage.resize(bytes * args.inputs.size());
  std::vector<const void*> out;
  for (size_t i = 0; i < args.inputs.size(); ++i) {
    void* dst = storage.data() + i * bytes;
    cpu::scale(args.dtype, dst, args.inputs[i], elems_per_input, args.factor);
    out.push_back(dst);
  }
  return out;
}

LinkCost stream_link(const GroupShape& g, const CostModel& m) {
  if (g.hosts == 1 && g.shm) return LinkCost{3 * m.shm.alpha_s, m.shm.bytes_per_s / 3};
  return bottleneck(g, m);
}

double pipeline_fill(double bytes, int hops, const LinkCost& l) {
  const double chunk = std::min(bytes, static_cast<double>(chunk_bytes()));
  return hops > 0 ? hops * chunk / l.bytes_per_s : 0.0;
}

bool overlaps(const void* a, size_t abytes, const void* b, size_t bbytes) {
  auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return abytes && bbytes && pa < pb + bbytes && pb < pa + abytes;
}

void single_rank_result(OpContext& ctx, const CollArgs& args) {
  const size_t bytes = args.count * dtype_size(args.dtype);
  auto copy = [&](void* dst, const void* src) {
    if (dst != src && bytes) std::memmove(dst, src, bytes);
  };
  switch (ctx.sig.kind) {
    case CollKind::kAllReduce:
    case CollKind::kReduce:
    case CollKind::kReduceScatter:
      if (args.op == RedOp::kPremulSum)
        cpu::scale(args.dtype, args.outputs[0], args.inputs[0], args.count, args.factor);
      else
        copy(args.outputs[0], args.inputs[0]);  // AVG over one rank is the value itself
      return;
    case CollKind::kAllGather:
      copy(args.outputs[0], args.inputs[0]);
      return;
    default:
      return;  // broadcast and barrier have nothing to do
  }
}

}  // namespace plexus
