// Pipelined chains for rooted collectives. Broadcast: root -> root+1 -> ... -> root-1, each
// rank forwarding chunk k as soon as it has it. Reduce: root+1 -> ... -> root-1 -> root, each
// rank adding its contribution to chunk k before forwarding it. Every link carries the data
// once, so large messages move at link speed; latency grows with the number of ranks (the tree
// algorithms of the tuner issue cover small messages on many ranks).
#include "algorithms/chain.h"

#include "algorithms/common.h"
#include "core/exchange.h"
#include "reduce/cpu_reduce.h"

namespace plexus {

double chain_cost(CollKind, double bytes, const GroupShape& g, const CostModel& m) {
  const int n = g.ranks;
  if (n <= 1) return 0;
  const LinkCost l = stream_link(g, m);
  return (n - 1) * l.alpha_s + bytes / l.bytes_per_s + pipeline_fill(bytes, n - 2, l);
}

void chain_broadcast(OpContext& ctx, const CollArgs& args) {
  const int n = ctx.size(), r = ctx.rank();
  if (n == 1) return;
  const int pos = wrap_rank(r - args.root, n);
  const int next = wrap_rank(r + 1, n), prev = wrap_rank(r - 1, n);
  const size_t es = dtype_size(args.dtype);
  char* buf = static_cast<char*>(args.outputs[0]);
  Chunks ch(args.count, es);
  Exchange ex(ctx);
  for (size_t k = 0; k < ch.n; ++k) {
    char* p = buf + ch.offset(k) * es;
    const size_t bytes = ch.size(k, args.count) * es;
    if (pos == 0) {
      ex.send(next, p, bytes);
    } else {
      int id = ex.recv(prev, p, bytes);
      if (pos < n - 1) ex.send(next, p, bytes, id);
    }
  }
  ex.run();
}

void chain_reduce(OpContext& ctx, const CollArgs& args) {
  const int n = ctx.size(), r = ctx.rank();
  if (n == 1) {
    if (r == args.root) single_rank_result(ctx, args);
    return;
  }
  const int pos = wrap_rank(r - args.root - 1, n);  // 0 starts the chain, n-1 is the root
  const int next = wrap_rank(r + 1, n), prev = wrap_rank(r - 1, n);
  const size_t es = dtype_size(args.dtype);
  const Reduction red = plan_reduction(args, n);
  std::vector<char> premul;
  const char* mine = static_cast<const char*>(scaled_inputs(args, args.count, premul)[0]);
  Chunks ch(args.count, es);
  // Middle ranks accumulate into scratch (their buffer is input only); the root reduces into its
  // output, landing chunks in scratch when the output is also the input.
  const bool root = pos == n - 1;
  char* out = static_cast<char*>(args.outputs[0]);
  const bool land_in_out = root && !overlaps(out, args.count * es, mine, args.count * es);
  std::vector<char> scratch(pos == 0 || land_in_out ? 0 : (root ? ch.elems : args.count) * es);
  Exchange ex(ctx);
  for (size_t k = 0; k < ch.n; ++k) {
    const size_t off = ch.offset(k) * es, elems = ch.size(k, args.count);
    const char* my = mine + off;
    if (pos == 0) {
      ex.send(next, my, elems * es);
      continue;
    }
    char* land = land_in_out ? out + off : scratch.data() + (root ? 0 : off);
    char* dst = root ? out + off : land;
    const double scale = root ? red.post_scale : 1.0;
    const DType dt = args.dtype;
    const RedOp op = red.kernel_op;
    int id = ex.recv(prev, land, elems * es, [=] { cpu::reduce2(op, dt, dst, my, land, elems, scale); });
    if (!root) ex.send(next, land, elems * es, id);
  }
  ex.run();
}

}  // namespace plexus
