// Ring algorithms: reduce-scatter and all-gather around the ring of ranks, and all-reduce as the
// two back to back. Bandwidth-optimal: each rank sends and receives 2(N-1)/N of the data for
// all-reduce. Blocks are split into chunks and pipelined: chunk k is forwarded as soon as it
// has arrived (and been reduced), while later chunks are still on the wire.
#include "algorithms/ring.h"

#include <cstring>

#include "algorithms/common.h"
#include "core/exchange.h"
#include "reduce/cpu_reduce.h"

namespace plexus {

namespace {

// Where one rank's view of the ring reads and writes each block.
struct RingBuffers {
  std::vector<const void*> contribution;  // this rank's input for block b
  std::vector<void*> landing;             // where block b's partial result arrives
  std::vector<void*> result;              // where block b's reduced result goes
  char* scratch_chunk = nullptr;          // if set, every chunk lands here instead
};

// Reduce-scatter phase, steps 0..N-2: at step s rank r sends block r-s-1 and receives block
// r-s-2, reducing it with its own contribution; after the last step it holds block r reduced.
// `last_ids[k]` returns the receive ids of the final step's chunks (for a following all-gather).
void post_reduce_scatter(Exchange& ex, OpContext& ctx, const CollArgs& args, const BlockLayout& L,
                         const RingBuffers& buf, std::vector<int>* last_ids) {
  const int n = ctx.size(), r = ctx.rank();
  const int next = wrap_rank(r + 1, n), prev = wrap_rank(r - 1, n);
  const size_t es = dtype_size(args.dtype);
  const Reduction red = plan_reduction(args, n);
  std::vector<int> prev_ids, cur_ids;
  for (int s = 0; s < n - 1; ++s) {
    const int sb = wrap_rank(r - s - 1, n), rb = wrap_rank(r - s - 2, n);
    const bool last = s == n - 2;
    Chunks sc(L.size(sb), es), rc(L.size(rb), es);
    for (size_t k = 0; k < sc.n; ++k) {
      const char* base = static_cast<const char*>(s == 0 ? buf.contribution[sb] : buf.result[sb]);
      ex.send(next, base + sc.offset(k) * es, sc.size(k, L.size(sb)) * es,
              s == 0 ? -1 : prev_ids[k]);
    }
    cur_ids.clear();
    for (size_t k = 0; k < rc.n; ++k) {
      const size_t off = rc.offset(k) * es, elems = rc.size(k, L.size(rb));
      char* land = buf.scratch_chunk ? buf.scratch_chunk : static_cast<char*>(buf.landing[rb]) + off;
      char* dst = static_cast<char*>(buf.result[rb]) + off;
      const char* mine = static_cast<const char*>(buf.contribution[rb]) + off;
      const double scale = last ? red.post_scale : 1.0;
      const DType dt = args.dtype;
      const RedOp op = red.kernel_op;
      cur_ids.push_back(ex.recv(prev, land, elems * es, [=] {
        cpu::reduce2(op, dt, dst, mine, land, elems, scale);
      }));
    }
    prev_ids.swap(cur_ids);
  }
  if (last_ids) *last_ids = prev_ids;
}

// All-gather phase, steps 0..N-2: at step t rank r sends block r-t and receives block r-t-1,
// which it forwards at the next step. `first_after` are receive ids the first sends wait on.
void post_all_gather(Exchange& ex, OpContext& ctx, const BlockLayout& L, size_t es,
                     const std::vector<void*>& blocks, const void* own_block,
                     const std::vector<int>& first_after) {
  const int n = ctx.size(), r = ctx.rank();
  const int next = wrap_rank(r + 1, n), prev = wrap_rank(r - 1, n);
  std::vector<int> prev_ids = first_after, cur_ids;
  for (int t = 0; t < n - 1; ++t) {
    const int sb = wrap_rank(r - t, n), rb = wrap_rank(r - t - 1, n);
    Chunks sc(L.size(sb), es), rc(L.size(rb), es);
    const char* src = static_cast<const char*>(t == 0 ? own_block : blocks[sb]);
    for (size_t k = 0; k < sc.n; ++k)
      ex.send(next, src + sc.offset(k) * es, sc.size(k, L.size(sb)) * es,
              prev_ids.empty() ? -1 : prev_ids[k]);
    cur_ids.clear();
    for (size_t k = 0; k < rc.n; ++k)
      cur_ids.push_back(ex.recv(prev, static_cast<char*>(blocks[rb]) + rc.offset(k) * es,
                                rc.size(k, L.size(rb)) * es));
    prev_ids.swap(cur_ids);
  }
}

}  // namespace

double ring_cost(CollKind kind, double bytes, const GroupShape& g, const CostModel& m) {
  const int n = g.ranks;
  if (n <= 1) return 0;
  const LinkCost l = stream_link(g, m);
  if (kind == CollKind::kAllReduce) return 2.0 * (n - 1) * l.time(bytes / n);
  return (n - 1) * l.time(bytes);  // all_gather, reduce_scatter: bytes is one rank's block
}

void ring_all_reduce(OpContext& ctx, const CollArgs& args) {
  const int n = ctx.size();
  if (n == 1) return single_rank_result(ctx, args);
  const size_t es = dtype_size(args.dtype);
  char* out = static_cast<char*>(args.outputs[0]);
  const char* in = static_cast<const char*>(args.inputs[0]);
  if (args.op == RedOp::kPremulSum) {
    // Scale into the output once; from then on it is an in-place sum.
    cpu::scale(args.dtype, out, in, args.count, args.factor);
    in = out;
  }
  const bool in_place = in == out;
  // In place, arriving chunks cannot land on the contribution they are reduced with: they land
  // in one scratch chunk instead (each is reduced before the next one is read).
  std::vector<char> scratch_chunk(in_place ? Chunks(args.count, es).elems * es : 0);
  BlockLayout L(args.count, n);
  RingBuffers buf;
  buf.scratch_chunk = in_place ? scratch_chunk.data() : nullptr;
  for (int b = 0; b < n; ++b) {
    const size_t off = L.offset(b) * es;
    buf.contribution.push_back(in + off);
    buf.result.push_back(out + off);
    buf.landing.push_back(out + off);
  }
  Exchange ex(ctx);
  std::vector<int> last_ids;
  post_reduce_scatter(ex, ctx, args, L, buf, &last_ids);
  post_all_gather(ex, ctx, L, es, buf.result, buf.result[ctx.rank()], last_ids);
  ex.run();
}

void ring_all_gather(OpContext& ctx, const CollArgs& args) {
  const int n = ctx.size(), r = ctx.rank();
  const size_t bytes = args.count * dtype_size(args.dtype);
  if (args.outputs[r] != args.inputs[0] && bytes)
    std::memmove(args.outputs[r], args.inputs[0], bytes);
  if (n == 1) return;
  BlockLayout L(args.count * static_cast<size_t>(n), n);  // n equal blocks of `count`
  Exchange ex(ctx);
  post_all_gather(ex, ctx, L, dtype_size(args.dtype), args.outputs, args.inputs[0], {});
  ex.run();
}

void ring_reduce_scatter(OpContext& ctx, const CollArgs& args) {
  const int n = ctx.size(), r = ctx.rank();
  if (n == 1) {
    CollArgs one = args;
    one.inputs = {args.inputs[0]};
    return single_rank_result(ctx, one);
  }
  const size_t es = dtype_size(args.dtype), bytes = args.count * es;
  std::vector<char> premul;
  RingBuffers buf;
  buf.contribution = scaled_inputs(args, args.count, premul);
  // Partial results of other ranks' blocks need room of their own; our own block lands in the
  // output unless the output overlaps an input.
  bool out_aliases = false;
  for (auto* p : buf.contribution) out_aliases |= overlaps(p, bytes, args.outputs[0], bytes);
  Scratch scratch(bytes * static_cast<size_t>(n));
  for (int b = 0; b < n; ++b) {
    void* own = scratch.data() + static_cast<size_t>(b) * bytes;
    buf.landing.push_back(b == r && !out_aliases ? args.outputs[0] : own);
    buf.result.push_back(b == r ? args.outputs[0] : own);
  }
  BlockLayout L(args.count * static_cast<size_t>(n), n);
  Exchange ex(ctx);
  post_reduce_scatter(ex, ctx, args, L, buf, nullptr);
  ex.run();
}

}  // namespace plexus
