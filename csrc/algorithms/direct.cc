// Direct exchanges: each rank talks to the peers it has data for, all streams at once (the
// progress engine interleaves them), in pipelined chunks. Used for gather, scatter and
// all-to-all, whose data is different for every pair of ranks.
#include "algorithms/direct.h"

#include <cstring>

#include "algorithms/common.h"
#include "core/exchange.h"

namespace plexus {

namespace {

void post_send(Exchange& ex, int peer, const void* buf, size_t count, size_t es) {
  Chunks ch(count, es);
  for (size_t k = 0; k < ch.n; ++k)
    ex.send(peer, static_cast<const char*>(buf) + ch.offset(k) * es, ch.size(k, count) * es);
}

void post_recv(Exchange& ex, int peer, void* buf, size_t count, size_t es) {
  Chunks ch(count, es);
  for (size_t k = 0; k < ch.n; ++k)
    ex.recv(peer, static_cast<char*>(buf) + ch.offset(k) * es, ch.size(k, count) * es);
}

void copy(void* dst, const void* src, size_t bytes) {
  if (dst != src && bytes) std::memmove(dst, src, bytes);
}

}  // namespace

double direct_cost(CollKind, double bytes, const GroupShape& g, const CostModel& m) {
  return (g.ranks - 1) * stream_link(g, m).time(bytes);  // the root's link carries everyone's
}

void direct_gather(OpContext& ctx, const CollArgs& args) {
  const int n = ctx.size(), r = ctx.rank();
  const size_t es = dtype_size(args.dtype);
  if (r != args.root) {
    if (n == 1) return;
    Exchange ex(ctx);
    post_send(ex, args.root, args.inputs[0], args.count, es);
    return ex.run();
  }
  copy(args.outputs[r], args.inputs[0], args.count * es);
  if (n == 1) return;
  Exchange ex(ctx);
  for (int p = 0; p < n; ++p)
    if (p != r) post_recv(ex, p, args.outputs[p], args.count, es);
  ex.run();
}

void direct_scatter(OpContext& ctx, const CollArgs& args) {
  const int n = ctx.size(), r = ctx.rank();
  const size_t es = dtype_size(args.dtype);
  if (r != args.root) {
    if (n == 1) return;
    Exchange ex(ctx);
    post_recv(ex, args.root, args.outputs[0], args.count, es);
    return ex.run();
  }
  copy(args.outputs[0], args.inputs[r], args.count * es);
  if (n == 1) return;
  Exchange ex(ctx);
  for (int p = 0; p < n; ++p)
    if (p != r) post_send(ex, p, args.inputs[p], args.count, es);
  ex.run();
}

void direct_all_to_all(OpContext& ctx, const CollArgs& args) {
  const int n = ctx.size(), r = ctx.rank();
  const size_t es = dtype_size(args.dtype);
  copy(args.outputs[r], args.inputs[r], args.input_counts[r] * es);
  if (n == 1) return;
  Exchange ex(ctx);
  // Start with the next rank and go round, so that not everyone sends to rank 0 first.
  for (int d = 1; d < n; ++d) {
    const int to = wrap_rank(r + d, n), from = wrap_rank(r - d, n);
    post_send(ex, to, args.inputs[to], args.input_counts[to], es);
    post_recv(ex, from, args.outputs[from], args.output_counts[from], es);
  }
  ex.run();
}

}  // namespace plexus
