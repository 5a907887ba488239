// Double binary tree all-reduce (as NCCL's): each half of the buffer is reduced up one of two
// complementary binary trees and broadcast back down it, chunk by chunk, so that reducing,
// forwarding up and broadcasting down overlap. Latency grows with log2(N), not N as in a ring,
// while both trees together keep every rank's links busy.
#include "algorithms/tree.h"

#include <algorithm>
#include <cstring>
#include <memory>

#include "algorithms/common.h"
#include "core/exchange.h"
#include "reduce/cpu_reduce.h"

namespace plexus {

TreeLinks first_tree(int n, int rank) {
  TreeLinks t;
  int bit = 1;
  while (bit < n && !(bit & rank)) bit <<= 1;  // lowest set bit of rank (>= n for rank 0)
  if (rank == 0) {
    if (n > 1) t.child[0] = bit >> 1;
    return t;
  }
  int up = (rank ^ bit) | (bit << 1);
  t.parent = up < n ? up : rank ^ bit;
  const int low = bit >> 1;
  if (low > 0) {
    t.child[0] = rank - low;
    for (int b = low; b > 0; b >>= 1)
      if (rank + b < n) {
        t.child[1] = rank + b;
        break;
      }
  }
  return t;
}

TreeLinks second_tree(int n, int rank) {
  TreeLinks t;
  auto map_links = [&](const TreeLinks& s, auto to_real) {
    t.parent = s.parent < 0 ? -1 : to_real(s.parent);
    for (int i = 0; i < 2; ++i) t.child[i] = s.child[i] < 0 ? -1 : to_real(s.child[i]);
  };
  if (n % 2 == 1) {
    map_links(first_tree(n, wrap_rank(rank - 1, n)), [n](int r) { return (r + 1) % n; });
  } else {
    map_links(first_tree(n, n - 1 - rank), [n](int r) { return n - 1 - r; });
  }
  return t;
}

namespace {

// One tree's share of the buffer: [acc, acc + count), with room in `scratch` for one copy of it
// per child.
struct TreePart {
  TreeLinks links;
  char* acc;
  size_t count;
  char* scratch;
};

// Posts chunk k of a tree: reduce it up (children's copies land in scratch and are reduced
// with ours in one kernel call), then broadcast the result back down.
void post_tree_chunk(Exchange& ex, const TreePart& t, size_t k, const Chunks& ch, DType dtype,
                     const Reduction& red) {
  const size_t es = dtype_size(dtype);
  int children[2], nchild = 0;
  for (int c : t.links.child)
    if (c >= 0) children[nchild++] = c;
  const size_t off = ch.offset(k) * es, elems = ch.size(k, t.count), bytes = elems * es;
  char* mine = t.acc + off;
  int arrived[2] = {-1, -1};
  if (nchild > 0) {
    auto join = std::make_shared<Join>(nchild);
    const double scale = t.links.parent < 0 ? red.post_scale : 1.0;
    char* land0 = t.scratch + off;
    char* land1 = t.scratch + t.count * es + off;
    const RedOp op = red.kernel_op;
    const int nsrcs = nchild + 1;
    for (int i = 0; i < nchild; ++i) {
      arrived[i] = ex.recv(children[i], i == 0 ? land0 : land1, bytes, [=] {
        if (!join->arrive()) return;
        const void* srcs[3] = {mine, land0, land1};
        cpu::reduce(op, dtype, mine, srcs, nsrcs, elems, scale);
      });
    }
  }
  if (t.links.parent >= 0) {
    ex.send_after(t.links.parent, mine, bytes, {arrived[0], arrived[1]});
    const int result = ex.recv(t.links.parent, mine, bytes);  // the final value comes back down
    for (int i = 0; i < nchild; ++i) ex.send(children[i], mine, bytes, result);
  } else {
    for (int i = 0; i < nchild; ++i) ex.send_after(children[i], mine, bytes, {arrived[0], arrived[1]});
  }
}

}  // namespace

double double_tree_cost(CollKind, double bytes, const GroupShape& g, const CostModel& m) {
  const int n = g.ranks;
  if (n <= 1) return 0;
  const LinkCost l = stream_link(g, m);
  const int depth = ceil_log2(n + 1) - 1 > 0 ? ceil_log2(n + 1) - 1 : 1;
  // Up and down each tree; no better than a ring on bandwidth (each half crosses a link twice
  // plus the fan-out), better on latency.
  return 2.0 * depth * l.alpha_s + 2.0 * bytes / l.bytes_per_s + pipeline_fill(bytes / 2, 2 * depth, l);
}

void double_tree_all_reduce(OpContext& ctx, const CollArgs& args) {
  const int n = ctx.size(), r = ctx.rank();
  if (n == 1) return single_rank_result(ctx, args);
  const size_t es = dtype_size(args.dtype);
  char* out = static_cast<char*>(args.outputs[0]);
  if (args.op == RedOp::kPremulSum)
    cpu::scale(args.dtype, out, args.inputs[0], args.count, args.factor);
  else if (out != args.inputs[0] && args.count)
    copy_bytes(out, args.inputs[0], args.count * es);
  const Reduction red = plan_reduction(args, n);
  const size_t half = args.count / 2, rest = args.count - half;
  Scratch scratch(2 * args.count * es);
  const TreePart parts[2] = {{first_tree(n, r), out, half, scratch.data()},
                             {second_tree(n, r), out + half * es, rest, scratch.data() + 2 * half * es}};
  const Chunks chunks[2] = {Chunks(half, es), Chunks(rest, es)};
  Exchange ex(ctx);
  // Both trees chunk by chunk, in the same order on every rank, so that streams shared by the
  // two trees interleave their chunks instead of one tree waiting for the other.
  for (size_t k = 0; k < std::max(chunks[0].n, chunks[1].n); ++k)
    for (int t = 0; t < 2; ++t)
      if (k < chunks[t].n) post_tree_chunk(ex, parts[t], k, chunks[t], args.dtype, red);
  ex.run();
}

}  // namespace plexus
