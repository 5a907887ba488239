// Intra-host algorithms over shared memory: every rank copies what the others need into its
// staging buffer once, and reads the others' buffers directly. Messages go in rounds that fit
// the staging buffer (and the caches), double-buffered so neighbours' rounds overlap.
//
//   all_reduce one-shot: everyone publishes everything and every rank reduces all of it
//     (fewest synchronisations: small messages).
//   all_reduce two-shot: rank i reduces slice i of the round and publishes the result; the
//     others copy it (reduce-scatter + all-gather by direct reads: large messages).
//   all_gather, reduce_scatter, broadcast, reduce, barrier: the same idea, one phase each.
//
// Every rank reduces sources in rank order, so all ranks get bit-identical results.
#include "algorithms/shm_direct.h"

#include <algorithm>
#include <cstring>

#include "algorithms/common.h"
#include "algorithms/host_rounds.h"
#include "base/config.h"
#include "reduce/cpu_reduce.h"
#include "transport/host_memory.h"

namespace plexus {

namespace {

constexpr size_t kPublishPiece = 32 << 10;  // bytes reduced, then copied out while in L1/L2

// Elements per round: the staging buffer bounds it, PLEXUS_SHM_ROUND_BYTES keeps it cache-sized.
size_t round_elems(const HostRounds& h, size_t es, size_t parts) {
  static const size_t round_bytes = env_bytes("PLEXUS_SHM_ROUND_BYTES", 512 << 10);
  size_t bytes = std::min(h.staging_bytes(), round_bytes * parts);
  size_t per_part = std::max<size_t>(1, bytes / parts / es);
  return per_part * parts;
}

size_t num_rounds(size_t count, size_t per_round) {
  return count == 0 ? 1 : (count + per_round - 1) / per_round;
}

void copy(void* dst, const void* src, size_t bytes) {
  if (dst != src && bytes) std::memmove(dst, src, bytes);
}

}  // namespace

const char* premultiplied(const CollArgs& args) {
  if (args.op != RedOp::kPremulSum) return static_cast<const char*>(args.inputs[0]);
  cpu::scale(args.dtype, args.outputs[0], args.inputs[0], args.count, args.factor);
  return static_cast<const char*>(args.outputs[0]);
}

bool shm_applicable(const GroupShape& g) { return g.ranks == 1 || (g.hosts == 1 && g.shm); }

// Memory traffic per rank, in units of the message, at memcpy speed.
double shm_cost(CollKind kind, double bytes, const GroupShape& g, const CostModel& m) {
  const int n = g.ranks;
  const LinkCost& l = m.shm;
  switch (kind) {
    case CollKind::kAllGather: return 2 * l.alpha_s + n * bytes / l.bytes_per_s;
    case CollKind::kReduceScatter: return 2 * l.alpha_s + 2.0 * n * bytes / l.bytes_per_s;
    case CollKind::kBroadcast: return 2 * l.alpha_s + 2.0 * bytes / l.bytes_per_s;
    case CollKind::kReduce: return 2 * l.alpha_s + (n + 1.0) * bytes / l.bytes_per_s;
    default: return 2 * l.alpha_s;  // barrier
  }
}

double shm_oneshot_cost(CollKind, double bytes, const GroupShape& g, const CostModel& m) {
  return 2 * m.shm.alpha_s + (g.ranks + 1.0) * bytes / m.shm.bytes_per_s;
}

// Per rank: publish the n-1 slices the others reduce, reduce one slice over n inputs, copy the
// n-1 reduced slices of the others.
double shm_twoshot_cost(CollKind, double bytes, const GroupShape& g, const CostModel& m) {
  const double n = g.ranks;
  return 3 * m.shm.alpha_s + (2.0 * (n - 1) / n + 1.0) * bytes / m.shm.bytes_per_s;
}

void shm_all_reduce_oneshot(OpContext& ctx, const CollArgs& args) {
  if (ctx.size() == 1) return single_rank_result(ctx, args);
  HostRounds h(ctx);
  const int n = h.size(), me = h.me();
  const size_t es = dtype_size(args.dtype);
  const Reduction red = plan_reduction(args, n);
  const char* in = premultiplied(args);
  char* out = static_cast<char*>(args.outputs[0]);
  const size_t per = std::min(round_elems(h, es, 1), h.staging_bytes() / es);
  std::vector<const void*> srcs(n);
  for (size_t r = 0, rounds = num_rounds(args.count, per); r < rounds; ++r) {
    const size_t off = r * per, m = std::min(per, args.count - std::min(args.count, off));
    char* mine = h.begin();
    copy_bytes(mine, in + off * es, m * es);
    h.publish_input();
    h.wait_input();
    for (int p = 0; p < n; ++p) srcs[p] = p == me ? in + off * es : h.staging(p);
    cpu::reduce(red.kernel_op, args.dtype, out + off * es, srcs.data(), n, m, red.post_scale);
    h.finish();
  }
}

void shm_all_reduce_twoshot(OpContext& ctx, const CollArgs& args) {
  if (ctx.size() == 1) return single_rank_result(ctx, args);
  const Reduction red = plan_reduction(args, ctx.size());
  shm_twoshot_rounds(ctx, args, red, nullptr);
}

void shm_twoshot_rounds(OpContext& ctx, const CollArgs& args, const Reduction& red,
                        const std::function<void(char* slice, size_t elems)>& between) {
  HostRounds h(ctx);
  const int n = h.size(), me = h.me();
  const size_t es = dtype_size(args.dtype);
  const char* in = premultiplied(args);
  char* out = static_cast<char*>(args.outputs[0]);
  const size_t per = round_elems(h, es, static_cast<size_t>(n));
  std::vector<const void*> srcs(n), piece_srcs(n);
  for (size_t r = 0, rounds = num_rounds(args.count, per); r < rounds; ++r) {
    const size_t off = r * per, m = std::min(per, args.count - std::min(args.count, off));
    BlockLayout L(m, n);
    char* mine = h.begin();
    // Publish the slices the others reduce; slot `me` will hold our reduced slice.
    for (int p = 0; p < n; ++p)
      if (p != me) copy_bytes(mine + L.offset(p) * es, in + (off + L.offset(p)) * es, L.size(p) * es);
    h.publish_input();
    h.wait_input();
    const size_t my_off = L.offset(me) * es, my_bytes = L.size(me) * es;
    for (int p = 0; p < n; ++p) srcs[p] = p == me ? in + off * es + my_off : h.staging(p) + my_off;
    char* my_out = out + off * es + my_off;
    if (between) {
      cpu::reduce(red.kernel_op, args.dtype, my_out, srcs.data(), n, L.size(me), red.post_scale);
      between(my_out, L.size(me));
      copy_bytes(mine + my_off, my_out, my_bytes);
    } else {
      // Piece by piece, so that publishing the result reads it from cache, not memory.
      const size_t piece = std::max<size_t>(1, kPublishPiece / es);
      for (size_t at = 0; at < L.size(me); at += piece) {
        const size_t k = std::min(piece, L.size(me) - at);
        for (int p = 0; p < n; ++p) piece_srcs[p] = static_cast<const char*>(srcs[p]) + at * es;
        cpu::reduce(red.kernel_op, args.dtype, my_out + at * es, piece_srcs.data(), n, k, red.post_scale);
        copy_bytes(mine + my_off + at * es, my_out + at * es, k * es);
      }
    }
    h.publish_result();
    h.wait_result();
    for (int p = 0; p < n; ++p)
      if (p != me)
        copy_bytes(out + (off + L.offset(p)) * es, h.staging(p) + L.offset(p) * es, L.size(p) * es);
    h.finish();
  }
}

void shm_all_gather(OpContext& ctx, const CollArgs& args) {
  if (ctx.size() == 1) return single_rank_result(ctx, args);
  HostRounds h(ctx);
  const int n = h.size(), me = h.me();
  const size_t es = dtype_size(args.dtype);
  const char* in = static_cast<const char*>(args.inputs[0]);
  copy(args.outputs[me], in, args.count * es);
  const size_t per = round_elems(h, es, 1);
  for (size_t r = 0, rounds = num_rounds(args.count, per); r < rounds; ++r) {
    const size_t off = r * per, m = std::min(per, args.count - std::min(args.count, off));
    copy_bytes(h.begin(), in + off * es, m * es);
    h.publish_input();
    h.wait_input();
    for (int p = 0; p < n; ++p)
      if (p != me) copy_bytes(static_cast<char*>(args.outputs[p]) + off * es, h.staging(p), m * es);
    h.finish();
  }
}

void shm_reduce_scatter(OpContext& ctx, const CollArgs& args) {
  if (ctx.size() == 1) {
    CollArgs one = args;
    one.inputs = {args.inputs[0]};
    return single_rank_result(ctx, one);
  }
  HostRounds h(ctx);
  const int n = h.size(), me = h.me();
  const size_t es = dtype_size(args.dtype);
  const Reduction red = plan_reduction(args, n);
  std::vector<char> premul;
  const std::vector<const void*> in = scaled_inputs(args, args.count, premul);
  // The output may be exactly our own block of the input (in place): each element is read before
  // it is written, so that is safe. (Other overlaps are refused by the Python layer.)
  const size_t per = round_elems(h, es, static_cast<size_t>(n)) / n;
  std::vector<const void*> srcs(n);
  for (size_t r = 0, rounds = num_rounds(args.count, per); r < rounds; ++r) {
    const size_t off = r * per, m = std::min(per, args.count - std::min(args.count, off));
    char* mine = h.begin();
    for (int p = 0; p < n; ++p)
      if (p != me) copy_bytes(mine + p * per * es, static_cast<const char*>(in[p]) + off * es, m * es);
    h.publish_input();
    h.wait_input();
    for (int p = 0; p < n; ++p)
      srcs[p] = p == me ? static_cast<const char*>(in[me]) + off * es : h.staging(p) + me * per * es;
    cpu::reduce(red.kernel_op, args.dtype, static_cast<char*>(args.outputs[0]) + off * es, srcs.data(), n,
                m, red.post_scale);
    h.finish();
  }
}

void shm_broadcast(OpContext& ctx, const CollArgs& args) {
  if (ctx.size() == 1) return single_rank_result(ctx, args);
  HostRounds h(ctx);
  const int root = ctx.host_memory()->local_index_of(args.root);
  const size_t es = dtype_size(args.dtype);
  char* buf = static_cast<char*>(args.outputs[0]);
  const size_t per = round_elems(h, es, 1);
  for (size_t r = 0, rounds = num_rounds(args.count, per); r < rounds; ++r) {
    const size_t off = r * per, m = std::min(per, args.count - std::min(args.count, off));
    char* mine = h.begin();
    if (h.me() == root) copy_bytes(mine, buf + off * es, m * es);
    h.publish_input();
    h.wait_input(root);
    if (h.me() != root) copy_bytes(buf + off * es, h.staging(root), m * es);
    h.finish();
  }
}

void shm_reduce(OpContext& ctx, const CollArgs& args) {
  if (ctx.size() == 1) return single_rank_result(ctx, args);
  HostRounds h(ctx);
  const int n = h.size(), me = h.me();
  const int root = ctx.host_memory()->local_index_of(args.root);
  const size_t es = dtype_size(args.dtype);
  const Reduction red = plan_reduction(args, n);
  std::vector<char> premul;
  const char* in = static_cast<const char*>(scaled_inputs(args, args.count, premul)[0]);
  const size_t per = round_elems(h, es, 1);
  std::vector<const void*> srcs(n);
  for (size_t r = 0, rounds = num_rounds(args.count, per); r < rounds; ++r) {
    const size_t off = r * per, m = std::min(per, args.count - std::min(args.count, off));
    char* mine = h.begin();
    if (me != root) copy_bytes(mine, in + off * es, m * es);
    h.publish_input();
    if (me == root) {
      h.wait_input();
      for (int p = 0; p < n; ++p) srcs[p] = p == me ? in + off * es : h.staging(p);
      cpu::reduce(red.kernel_op, args.dtype, static_cast<char*>(args.outputs[0]) + off * es,
                  srcs.data(), n, m, red.post_scale);
    }
    h.finish();
  }
}

void shm_barrier(OpContext& ctx, const CollArgs&) {
  if (ctx.size() == 1) return;
  HostRounds h(ctx);
  h.begin();
  h.publish_input();
  h.wait_input();
  h.finish();
}

}  // namespace plexus
