// Recursive halving-doubling (Rabenseifner): reduce-scatter by recursive halving (log2 p steps,
// each exchanging half of what is left with the rank at distance p/2, p/4, ... 1), then
// all-gather by recursive doubling. Bandwidth-optimal like a ring but with 2 log2 p steps
// instead of 2(N-1): the choice for medium messages on many ranks.
//
// For N not a power of two, N - p ranks first hand their data to a neighbour and sit out
// ("fold"): rank 2i gives to rank 2i+1 for i < N - p; the p remaining ranks run the core; the
// helpers get the result back at the end.
#include "algorithms/rhd.h"

#include <algorithm>
#include <cstring>

#include "algorithms/common.h"
#include "core/exchange.h"
#include "reduce/cpu_reduce.h"

namespace plexus {

namespace {

struct Fold {
  int n, p, rem;
  explicit Fold(int n_) : n(n_), p(1), rem(0) {
    while (p * 2 <= n) p *= 2;
    rem = n - p;
  }
  bool sits_out(int r) const { return r < 2 * rem && r % 2 == 0; }
  bool absorbs(int r) const { return r < 2 * rem && r % 2 == 1; }
  int core(int r) const { return r < 2 * rem ? r / 2 : r - rem; }
  int rank(int c) const { return c < rem ? 2 * c + 1 : c + rem; }
};

// The working buffer is split into units (element ranges); core rank c ends reduce-scatter
// owning units [own[c], own[c+1]).
struct Layout {
  std::vector<size_t> unit_off;  // U + 1 element offsets
  std::vector<int> own;          // p + 1 unit indices
  size_t elems(int cu_lo, int cu_hi) const { return unit_off[own[cu_hi]] - unit_off[own[cu_lo]]; }
  size_t start(int cu) const { return unit_off[own[cu]]; }
};

// Which receive last wrote each element range of the working buffer, so that a chunk waits
// for the chunks it needs and no more: step k+1 sends a chunk as soon as step k has reduced
// it (the steps pipeline, as a ring does), instead of after step k's last byte.
class Writers {
 public:
  void set(size_t lo, size_t hi, int id) {
    if (hi <= lo) return;
    std::vector<Segment> kept;
    for (const Segment& g : segs_) {
      if (g.hi <= lo || g.lo >= hi) {
        kept.push_back(g);
        continue;
      }
      if (g.lo < lo) kept.push_back({g.lo, lo, g.id});
      if (g.hi > hi) kept.push_back({hi, g.hi, g.id});
    }
    kept.push_back({lo, hi, id});
    segs_ = std::move(kept);
  }
  // The receives that wrote any of [lo, hi).
  std::vector<int> of(size_t lo, size_t hi) const {
    std::vector<int> ids;
    for (const Segment& g : segs_)
      if (g.lo < hi && lo < g.hi && std::find(ids.begin(), ids.end(), g.id) == ids.end()) ids.push_back(g.id);
    return ids;
  }
  // The latest of them (-1: none): enough where they all came from one peer, in order.
  int last_of(size_t lo, size_t hi) const {
    const std::vector<int> ids = of(lo, hi);
    return ids.empty() ? -1 : *std::max_element(ids.begin(), ids.end());
  }

 private:
  struct Segment {
    size_t lo, hi;
    int id;
  };
  std::vector<Segment> segs_;
};

// Sends elements [lo, lo + count) of `base` in chunks, each once its elements are written.
void send_range(Exchange& ex, int peer, const char* base, size_t lo, size_t count, size_t es, const Writers& w) {
  Chunks ch(count, es);
  for (size_t k = 0; k < ch.n; ++k) {
    const size_t a = lo + ch.offset(k), m = ch.size(k, count);
    ex.send_after(peer, base + a * es, m * es, w.of(a, a + m));
  }
}

// Receives elements [lo, lo + count) into `dst` (same offsets); with `red`, each chunk lands in
// `scratch` and is reduced into `dst` instead, not before the receive that last wrote those
// elements (from one peer, the previous step's partner) has arrived: reductions of successive
// steps happen in order (the last one also scales, for AVG). Without `red`, nothing is read
// before receive `after`. Records the chunks in `w`; returns the last receive's id.
int recv_range(Exchange& ex, int peer, char* dst, size_t lo, size_t count, size_t es, DType dtype,
               const Reduction* red, double scale, char* scratch, int after, Writers& w) {
  Chunks ch(count, es);
  int last = after;
  for (size_t k = 0; k < ch.n; ++k) {
    const size_t a = lo + ch.offset(k), elems = ch.size(k, count), off = a * es;
    if (!red) {
      last = ex.recv(peer, dst + off, elems * es, nullptr, k == 0 ? after : -1);
    } else {
      char* land = scratch + off;
      char* into = dst + off;
      const RedOp op = red->kernel_op;
      last = ex.recv(peer, land, elems * es, [=] { cpu::reduce2(op, dtype, into, into, land, elems, scale); },
                     w.last_of(a, a + elems));
    }
    w.set(a, a + elems, last);
  }
  return last;
}

// Recursive halving over the core ranks; returns the id of the last receive.
int post_halving(Exchange& ex, const Fold& f, const Layout& L, int c, char* work, char* scratch,
                 DType dtype, const Reduction& red, int after, Writers& w) {
  const size_t es = dtype_size(dtype);
  int lo = 0, hi = f.p;
  for (int d = f.p / 2; d >= 1; d /= 2) {
    const int mid = lo + d, partner = f.rank(c ^ d);
    const bool lower = c < mid;
    const int keep_lo = lower ? lo : mid, keep_hi = lower ? mid : hi;
    const int give_lo = lower ? mid : lo, give_hi = lower ? hi : mid;
    send_range(ex, partner, work, L.start(give_lo), L.elems(give_lo, give_hi), es, w);
    after = recv_range(ex, partner, work, L.start(keep_lo), L.elems(keep_lo, keep_hi), es, dtype, &red,
                       d == 1 ? red.post_scale : 1.0, scratch, after, w);
    lo = keep_lo;
    hi = keep_hi;
  }
  return after;
}

// Recursive doubling over the core ranks, from each owning its units to all of them.
int post_doubling(Exchange& ex, const Fold& f, const Layout& L, int c, char* work, size_t es, int after,
                  Writers& w) {
  int lo = c, hi = c + 1;
  for (int d = 1; d < f.p; d *= 2) {
    const int partner = f.rank(c ^ d);
    const int plo = (c ^ d) & ~(d - 1), phi = plo + d;  // the partner's current range
    send_range(ex, partner, work, L.start(lo), L.elems(lo, hi), es, w);
    after = recv_range(ex, partner, work, L.start(plo), L.elems(plo, phi), es, DType::kUInt8, nullptr, 1.0,
                       nullptr, after, w);
    lo = std::min(lo, plo);
    hi = std::max(hi, phi);
  }
  return after;
}

// Core rank c owns its own block and, if it absorbed a neighbour, the neighbour's block too.
Layout block_layout(const Fold& f, size_t count_per_block) {
  Layout L;
  for (int u = 0; u <= f.n; ++u) L.unit_off.push_back(static_cast<size_t>(u) * count_per_block);
  for (int c = 0; c <= f.p; ++c) L.own.push_back(c < f.rem ? 2 * c : c + f.rem);
  return L;
}

}  // namespace

double rhd_cost(CollKind kind, double bytes, const GroupShape& g, const CostModel& m) {
  const int n = g.ranks;
  if (n <= 1) return 0;
  const Fold f(n);
  const LinkCost l = stream_link(g, m);
  const int steps = ceil_log2(f.p);
  const double frac = static_cast<double>(f.p - 1) / f.p;
  // The all_reduce moves what a ring moves, but its steps overlap less (a step's part waits for
  // the previous step to reduce it) and it works on a copy of the input: 1% more on the bytes
  // term puts the crossing with the ring where it was measured (4 ranks over TCP: rhd faster up
  // to 1 MiB, the ring from 4 MiB; 64 MiB: rhd 1.4x the ring's time).
  constexpr double kStepLoss = 1.01;
  if (kind == CollKind::kAllReduce)
    return 2.0 * steps * l.alpha_s + kStepLoss * 2.0 * frac * bytes / l.bytes_per_s +
           (f.rem ? 2.0 * l.time(bytes) : 0.0);
  const double total = bytes * n;  // all_gather, reduce_scatter: bytes is one rank's block
  return steps * l.alpha_s + frac * total / l.bytes_per_s + (f.rem ? 2 * l.alpha_s + total / l.bytes_per_s : 0.0);
}

void rhd_all_reduce(OpContext& ctx, const CollArgs& args) {
  const int n = ctx.size(), r = ctx.rank();
  if (n == 1) return single_rank_result(ctx, args);
  const size_t es = dtype_size(args.dtype), count = args.count;
  char* work = static_cast<char*>(args.outputs[0]);
  if (args.op == RedOp::kPremulSum)
    cpu::scale(args.dtype, work, args.inputs[0], count, args.factor);
  else if (work != args.inputs[0] && count)
    copy_bytes(work, args.inputs[0], count * es);
  const Fold f(n);
  const Reduction red = plan_reduction(args, n);
  Exchange ex(ctx);
  Writers w;
  if (f.sits_out(r)) {
    send_range(ex, r + 1, work, 0, count, es, w);
    recv_range(ex, r + 1, work, 0, count, es, args.dtype, nullptr, 1.0, nullptr, -1, w);
    return ex.run();
  }
  Layout L;
  BlockLayout blocks(count, f.p);
  for (int c = 0; c <= f.p; ++c) {
    L.unit_off.push_back(c < f.p ? blocks.offset(c) : count);
    L.own.push_back(c);
  }
  // The neighbour's data and the partners' data arrive concurrently: separate landing areas.
  Scratch scratch(count * es), fold_scratch(f.absorbs(r) ? count * es : 0);
  int after = -1;
  if (f.absorbs(r))
    after = recv_range(ex, r - 1, work, 0, count, es, args.dtype, &red, 1.0, fold_scratch.data(), -1, w);
  const int c = f.core(r);
  after = post_halving(ex, f, L, c, work, scratch.data(), args.dtype, red, after, w);
  post_doubling(ex, f, L, c, work, es, after, w);
  if (f.absorbs(r)) send_range(ex, r - 1, work, 0, count, es, w);
  ex.run();
}

void rhd_reduce_scatter(OpContext& ctx, const CollArgs& args) {
  const int n = ctx.size(), r = ctx.rank();
  if (n == 1) {
    CollArgs one = args;
    one.inputs = {args.inputs[0]};
    return single_rank_result(ctx, one);
  }
  const size_t es = dtype_size(args.dtype), count = args.count, bytes = count * es;
  // Halving works on one contiguous copy of the input blocks (scaled for PREMUL_SUM).
  Scratch work(bytes * n), scratch(bytes * n), fold_scratch(Fold(n).absorbs(r) ? bytes * n : 0);
  for (int b = 0; b < n; ++b) {
    char* dst = work.data() + b * bytes;
    if (args.op == RedOp::kPremulSum)
      cpu::scale(args.dtype, dst, args.inputs[b], count, args.factor);
    else if (bytes)
      copy_bytes(dst, args.inputs[b], bytes);
  }
  const Fold f(n);
  const Reduction red = plan_reduction(args, n);
  char* out = static_cast<char*>(args.outputs[0]);
  Exchange ex(ctx);
  Writers w;
  if (f.sits_out(r)) {
    send_range(ex, r + 1, work.data(), 0, count * n, es, w);
    recv_range(ex, r + 1, out, 0, count, es, args.dtype, nullptr, 1.0, nullptr, -1, w);
    return ex.run();
  }
  const Layout L = block_layout(f, count);
  int after = -1;
  if (f.absorbs(r))
    after = recv_range(ex, r - 1, work.data(), 0, count * n, es, args.dtype, &red, 1.0, fold_scratch.data(), -1, w);
  post_halving(ex, f, L, f.core(r), work.data(), scratch.data(), args.dtype, red, after, w);
  if (f.absorbs(r)) send_range(ex, r - 1, work.data(), (r - 1) * count, count, es, w);
  ex.run();
  copy_bytes(out, work.data() + r * bytes, bytes);
}

void rhd_all_gather(OpContext& ctx, const CollArgs& args) {
  const int n = ctx.size(), r = ctx.rank();
  const size_t es = dtype_size(args.dtype), count = args.count, bytes = count * es;
  if (n == 1) {
    if (args.outputs[0] != args.inputs[0] && bytes) std::memmove(args.outputs[0], args.inputs[0], bytes);
    return;
  }
  // Doubling works on one contiguous buffer of all blocks; copied out to the outputs at the end.
  Scratch work(bytes * n);
  copy_bytes(work.data() + r * bytes, args.inputs[0], bytes);
  const Fold f(n);
  Exchange ex(ctx);
  Writers w;
  if (f.sits_out(r)) {
    send_range(ex, r + 1, work.data(), r * count, count, es, w);
    recv_range(ex, r + 1, work.data(), 0, count * n, es, args.dtype, nullptr, 1.0, nullptr, -1, w);
  } else {
    const Layout L = block_layout(f, count);
    int after = -1;
    if (f.absorbs(r))
      after = recv_range(ex, r - 1, work.data(), (r - 1) * count, count, es, args.dtype, nullptr, 1.0, nullptr, -1,
                         w);
    post_doubling(ex, f, L, f.core(r), work.data(), es, after, w);
    if (f.absorbs(r)) send_range(ex, r - 1, work.data(), 0, count * n, es, w);
  }
  ex.run();
  for (int b = 0; b < n; ++b)
    copy_bytes(args.outputs[b], work.data() + b * bytes, bytes);
}

}  // namespace plexus
