// The flat collectives through message ports (port_flat.h).
#include "algorithms/port_flat.h"

#include <cstring>
#include <vector>

#include "algorithms/common.h"
#include "base/error.h"
#include "reduce/cpu_reduce.h"
#ifdef PLEXUS_WITH_CUDA
#include <optional>

#include "reduce/cuda_reduce.h"
#include "transport/cuda_ipc/cuda_ipc.h"
#endif

namespace plexus {

namespace {

// dst = the reduction of `srcs` (in rank order, as the host algorithms reduce), `count` elements.
// PREMUL_SUM scales the sum instead of each input: the device memory has no scaled copies.
void reduce_into(const OpContext& ctx, const CollArgs& args, const PortPlace& at, void* dst,
                 const std::vector<const void*>& srcs, size_t count) {
  Reduction plan = plan_reduction(args, ctx.size());
  if (args.op == RedOp::kPremulSum) plan.post_scale = args.factor;
  const int nsrcs = static_cast<int>(srcs.size());
  if (at.memory == MemoryKind::kHost) {
    if (count) cpu::reduce(plan.kernel_op, args.dtype, dst, srcs.data(), nsrcs, count, plan.post_scale);
    return;
  }
#ifdef PLEXUS_WITH_CUDA
  cuda::reduce_now(at.device, plan.kernel_op, args.dtype, dst, srcs.data(), nsrcs, count, plan.post_scale);
#else
  (void)dst, (void)count;
  throw Error(ctx.describe() + ": reducing device arrays needs CUDA, and plexus was built without it");
#endif
}

void copy_into(const OpContext& ctx, const PortPlace& at, void* dst, const void* src, size_t bytes) {
  if (bytes == 0 || dst == src) return;
  if (at.memory == MemoryKind::kHost) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef PLEXUS_WITH_CUDA
  cuda::copy_now(at.device, dst, src, bytes);
#else
  throw Error(ctx.describe() + ": copying device arrays needs CUDA, and plexus was built without it");
#endif
}

}  // namespace

size_t port_flat_scratch_bytes(CollKind kind, size_t count, DType dtype, int size, int rank, int root) {
  const size_t peers = static_cast<size_t>(size > 1 ? size - 1 : 0), es = dtype_size(dtype);
  switch (kind) {
    case CollKind::kAllReduce: return peers * BlockLayout(count, size).size(0) * es;  // block 0 is the largest
    case CollKind::kReduceScatter: return peers * count * es;
    case CollKind::kReduce: return rank == root ? peers * count * es : 0;
    default: return 0;
  }
}

void port_flat(OpContext& ctx, const CollArgs& a, const PortPlace& at) {
#ifdef PLEXUS_WITH_CUDA
  // The arrays' device current on this thread while UCX is handed their memory: UCX before 1.19
  // copies CUDA memory in the context of the thread that posts it (this one may have none).
  std::optional<cuda_ipc::DeviceGuard> on_device;
  if (at.memory == MemoryKind::kCuda) on_device.emplace(at.device);
  if (at.memory == MemoryKind::kCuda && at.ready_event) cuda::wait_event(at.device, at.ready_event);
#endif
  const int n = ctx.size(), r = ctx.rank(), root = a.root;
  const size_t es = dtype_size(a.dtype), c = a.count;
  char* scratch = static_cast<char*>(at.scratch);
  auto in = [&](int i) { return const_cast<char*>(static_cast<const char*>(a.inputs[i])); };
  auto out = [&](int i) { return static_cast<char*>(a.outputs[i]); };
  // Peer p's block in the working memory, blocks `stride` bytes apart.
  auto slot = [&](int p, size_t stride) { return scratch + static_cast<size_t>(p < r ? p : p - 1) * stride; };
  std::vector<PortBlock> recvs, sends;
  auto exchange = [&] {
    ctx.port_exchange(recvs, sends, at.memory);
    recvs.clear();
    sends.clear();
  };
  // Rank p's contribution for a reduction: `own` for this rank, its slot for the others.
  auto by_rank = [&](const void* own, size_t stride) {
    std::vector<const void*> srcs;
    for (int p = 0; p < n; ++p) srcs.push_back(p == r ? own : slot(p, stride));
    return srcs;
  };
  switch (ctx.sig.kind) {
    case CollKind::kAllReduce: {
      const BlockLayout blocks(c, n);
      const size_t mine = blocks.size(r) * es, stride = blocks.size(0) * es;
      for (int p = 0; p < n; ++p) {
        if (p == r) continue;
        recvs.push_back({p, slot(p, stride), mine});
        sends.push_back({p, in(0) + blocks.offset(p) * es, blocks.size(p) * es});
      }
      exchange();
      reduce_into(ctx, a, at, out(0) + blocks.offset(r) * es, by_rank(in(0) + blocks.offset(r) * es, stride),
                  blocks.size(r));
      for (int p = 0; p < n; ++p) {
        if (p == r) continue;
        recvs.push_back({p, out(0) + blocks.offset(p) * es, blocks.size(p) * es});
        sends.push_back({p, out(0) + blocks.offset(r) * es, mine});
      }
      exchange();
      return;
    }
    case CollKind::kReduceScatter:
      for (int p = 0; p < n; ++p) {
        if (p == r) continue;
        recvs.push_back({p, slot(p, c * es), c * es});
        sends.push_back({p, in(p), c * es});
      }
      exchange();
      reduce_into(ctx, a, at, out(0), by_rank(in(r), c * es), c);
      return;
    case CollKind::kAllGather:
      copy_into(ctx, at, out(r), in(0), c * es);
      for (int p = 0; p < n; ++p) {
        if (p == r) continue;
        recvs.push_back({p, out(p), c * es});
        sends.push_back({p, in(0), c * es});
      }
      exchange();
      return;
    case CollKind::kBroadcast:
      if (r == root) {
        copy_into(ctx, at, out(0), in(0), c * es);
        for (int p = 0; p < n; ++p)
          if (p != r) sends.push_back({p, in(0), c * es});
      } else {
        recvs.push_back({root, out(0), c * es});
      }
      exchange();
      return;
    case CollKind::kReduce:
      if (r != root) {
        sends.push_back({root, in(0), c * es});
        exchange();
        return;
      }
      for (int p = 0; p < n; ++p)
        if (p != r) recvs.push_back({p, slot(p, c * es), c * es});
      exchange();
      reduce_into(ctx, a, at, out(0), by_rank(in(0), c * es), c);
      return;
    case CollKind::kGather:
      if (r != root) {
        sends.push_back({root, in(0), c * es});
      } else {
        copy_into(ctx, at, out(r), in(0), c * es);
        for (int p = 0; p < n; ++p)
          if (p != r) recvs.push_back({p, out(p), c * es});
      }
      exchange();
      return;
    case CollKind::kScatter:
      if (r != root) {
        recvs.push_back({root, out(0), c * es});
      } else {
        copy_into(ctx, at, out(0), in(r), c * es);
        for (int p = 0; p < n; ++p)
          if (p != r) sends.push_back({p, in(p), c * es});
      }
      exchange();
      return;
    case CollKind::kAllToAll:
      copy_into(ctx, at, out(r), in(r), a.input_counts[r] * es);
      for (int p = 0; p < n; ++p) {
        if (p == r) continue;
        recvs.push_back({p, out(p), a.output_counts[p] * es});
        sends.push_back({p, in(p), a.input_counts[p] * es});
      }
      exchange();
      return;
    default:
      throw InvalidArgument(ctx.describe() + ": not a collective of device arrays");
  }
}

}  // namespace plexus
