// Block layout, chunking, reduction bookkeeping and link costs shared by the algorithms.
#include "algorithms/common.h"

#include <algorithm>
#include <cstring>

#include "base/config.h"
#include "reduce/cpu_reduce.h"

namespace plexus {

namespace {

struct ScratchCache {
  static constexpr int kSlots = 4;
  std::unique_ptr<char[]> buf[kSlots];
  size_t size[kSlots] = {};
  bool busy[kSlots] = {};
  size_t total = 0;
};

thread_local ScratchCache scratch_cache;

}  // namespace

Scratch::Scratch(size_t bytes) {
  if (bytes == 0) return;
  ScratchCache& c = scratch_cache;
  int fits = -1, grow = -1;  // the smallest free slot that fits; else the largest free one
  for (int s = 0; s < ScratchCache::kSlots; ++s) {
    if (c.busy[s]) continue;
    if (c.size[s] >= bytes && (fits < 0 || c.size[s] < c.size[fits])) fits = s;
    if (grow < 0 || c.size[s] > c.size[grow]) grow = s;
  }
  int pick = fits;
  if (pick < 0 && grow >= 0 && c.total - c.size[grow] + bytes <= kCached) {
    c.total -= c.size[grow];
    c.buf[grow].reset();  // freed before the larger one is taken
    c.buf[grow].reset(new char[bytes]);
    c.size[grow] = bytes;
    c.total += bytes;
    pick = grow;
  }
  if (pick >= 0) {
    c.busy[pick] = true;
    slot_ = pick;
    data_ = c.buf[pick].get();
    return;
  }
  own_.reset(new char[bytes]);
  data_ = own_.get();
}

Scratch::~Scratch() {
  if (slot_ >= 0) scratch_cache.busy[slot_] = false;
}

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
