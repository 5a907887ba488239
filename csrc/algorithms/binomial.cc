// Binomial tree broadcast and reduce: ceil(log2 N) levels instead of a chain's N-1 hops, for
// small messages; chunks are pipelined from one level to the next.
#include "algorithms/binomial.h"

#include <cstring>
#include <memory>

#include "algorithms/common.h"
#include "core/exchange.h"
#include "reduce/cpu_reduce.h"

namespace plexus {

BinomialLinks binomial_links(int n, int rank, int root) {
  BinomialLinks b;
  const int v = wrap_rank(rank - root, n);
  int high = 1;  // smallest power of two above v's highest bit (1 for the root)
  while (high <= v) high <<= 1;
  if (v > 0) b.parent = wrap_rank((v - (high >> 1)) + root, n);
  for (int m = high; v + m < n; m <<= 1) b.children.insert(b.children.begin(), wrap_rank(v + m + root, n));
  return b;
}

double binomial_cost(CollKind, double bytes, const GroupShape& g, const CostModel& m) {
  // The root sends (or receives) the whole message once per level.
  return ceil_log2(g.ranks) * stream_link(g, m).time(bytes);
}

void binomial_broadcast(OpContext& ctx, const CollArgs& args) {
  const int n = ctx.size();
  if (n == 1) return;
  const BinomialLinks t = binomial_links(n, ctx.rank(), args.root);
  const size_t es = dtype_size(args.dtype);
  char* buf = static_cast<char*>(args.outputs[0]);
  Chunks ch(args.count, es);
  Exchange ex(ctx);
  for (size_t k = 0; k < ch.n; ++k) {
    char* p = buf + ch.offset(k) * es;
    const size_t bytes = ch.size(k, args.count) * es;
    const int got = t.parent >= 0 ? ex.recv(t.parent, p, bytes) : -1;
    for (int c : t.children) ex.send(c, p, bytes, got);
  }
  ex.run();
}

void binomial_reduce(OpContext& ctx, const CollArgs& args) {
  const int n = ctx.size(), r = ctx.rank();
  if (n == 1) return single_rank_result(ctx, args);
  const BinomialLinks t = binomial_links(n, r, args.root);
  const size_t es = dtype_size(args.dtype), bytes_all = args.count * es;
  const Reduction red = plan_reduction(args, n);
  std::vector<char> premul;
  const char* mine = static_cast<const char*>(scaled_inputs(args, args.count, premul)[0]);
  const bool root = t.parent < 0;
  const int nchild = static_cast<int>(t.children.size());
  // Partial sums go to the output at the root, to scratch elsewhere (inputs stay untouched).
  std::vector<char> acc_store(root || nchild == 0 ? 0 : bytes_all);
  char* acc = root ? static_cast<char*>(args.outputs[0]) : acc_store.data();
  std::vector<char> landing(static_cast<size_t>(nchild) * bytes_all);
  Chunks ch(args.count, es);
  Exchange ex(ctx);
  for (size_t k = 0; k < ch.n; ++k) {
    const size_t off = ch.offset(k) * es, elems = ch.size(k, args.count), bytes = elems * es;
    if (nchild == 0) {  // a leaf sends its own contribution
      ex.send(t.parent, mine + off, bytes);
      continue;
    }
    auto join = std::make_shared<Join>(nchild);
    std::vector<int> ids;
    auto srcs = std::make_shared<std::vector<const void*>>();
    srcs->push_back(mine + off);
    for (int i = 0; i < nchild; ++i) srcs->push_back(landing.data() + i * bytes_all + off);
    const DType dt = args.dtype;
    const RedOp op = red.kernel_op;
    const double scale = root ? red.post_scale : 1.0;
    char* dst = acc + off;
    for (int i = 0; i < nchild; ++i)
      ids.push_back(ex.recv(t.children[i], landing.data() + i * bytes_all + off, bytes, [=] {
        if (join->arrive()) cpu::reduce(op, dt, dst, srcs->data(), nchild + 1, elems, scale);
      }));
    // Forward once every child's chunk is in (the last arrival reduced them all).
    if (!root) ex.send_after(t.parent, dst, bytes, std::move(ids));
  }
  ex.run();
}

}  // namespace plexus
