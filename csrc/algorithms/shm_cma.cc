// All-reduce by cross-memory attach (Open MPI's vader does its large messages this way). Rank r
// owns part r of the buffer. It publishes where its input and output are (in its staging
// buffer, the only thing staged), then reads part r of every peer's input into a small local
// piece with process_vm_readv and reduces piece by piece into its output (the piece stays in
// cache), so part r is read from memory once per input and written once. After a barrier it
// reads every other part, reduced, straight from its owner's output into its own; a last
// barrier keeps the user's buffers untouched until nobody reads them: no staging copy in and
// none out.
#include "algorithms/shm_cma.h"

#include <errno.h>
#include <sys/uio.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "algorithms/common.h"
#include "algorithms/host_rounds.h"
#include "algorithms/shm_direct.h"
#include "base/error.h"
#include "base/text.h"
#include "reduce/cpu_reduce.h"

namespace plexus {

namespace {

constexpr size_t kPieceBytes = 128 << 10;  // per peer: what is read, then reduced, while in L2
constexpr double kSyscallSeconds = 1e-6;    // one process_vm_readv, besides its bytes
constexpr double kKernelCopy = 2.5;         // process_vm_readv's time per byte over memcpy's

struct Published {  // at the start of the rank's staging buffer
  uint64_t in, out;
};

// A read of local peer `p` failed with `err`. A peer that died while it was read (its memory
// goes with it: EFAULT, ESRCH) is a PeerError, as in every wait; it may still be a zombie for a
// moment, which the peer check sees within a few tries.
[[noreturn]] void read_failed(HostRounds& h, int p, int err) {
  if (err == EFAULT || err == ESRCH) {
    for (int i = 0; i < 64; ++i) {
      h.check(p);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  throw Error("reading " + h.name_of(p) + "'s buffer with process_vm_readv failed: " +
              (err ? errno_text(err) : std::string("nothing read")));
}

// Copies `bytes` from address `from` of local peer `p` to `to`.
void read_from(HostRounds& h, int p, void* to, uint64_t from, size_t bytes) {
  size_t done = 0;
  while (done < bytes) {
    iovec local{static_cast<char*>(to) + done, bytes - done};
    iovec remote{reinterpret_cast<void*>(from + done), bytes - done};
    const ssize_t got = process_vm_readv(h.pid_of(p), &local, 1, &remote, 1, 0);
    if (got <= 0) read_failed(h, p, got < 0 ? errno : 0);
    done += static_cast<size_t>(got);
  }
}

}  // namespace

bool cma_applicable(const GroupShape& g) { return g.ranks == 1 || (g.hosts == 1 && g.shm && g.cma); }

// Counted as shm_twoshot_cost counts (each copy or reduction by the bytes it writes): the
// kernel copies the peers' parts and the others' results, 2(n-1)/n, at kKernelCopy times the
// cost of a copy in user space, and this rank reduces 1/n; plus three barriers and a system
// call per piece and peer. Against two-shot's 2(n-1)/n + 1 that never wins where the kernel's
// copy is as slow as measured on the 2-core VM (process_vm_readv 7-9 GB/s, memcpy 20 GB/s:
// shm_cma took 1.2x two-shot's time at 64 MiB on 2 ranks, 2x at 1 MiB).
double shm_cma_cost(CollKind, double bytes, const GroupShape& g, const CostModel& m) {
  const double n = g.ranks;
  const double calls = (n - 1) * (bytes / n / kPieceBytes + 1);
  return 3 * m.shm.alpha_s + calls * kSyscallSeconds +
         (kKernelCopy * 2 * (n - 1) / n + 1 / n) * bytes / m.shm.bytes_per_s;
}

void shm_all_reduce_cma(OpContext& ctx, const CollArgs& args) {
  if (ctx.size() == 1) return single_rank_result(ctx, args);
  HostRounds h(ctx);
  const int n = h.size(), me = h.me();
  const size_t es = dtype_size(args.dtype);
  const Reduction red = plan_reduction(args, n);
  char* out = static_cast<char*>(args.outputs[0]);
  const char* in = premultiplied(args);
  Published mine{reinterpret_cast<uint64_t>(in), reinterpret_cast<uint64_t>(out)};
  std::memcpy(h.begin(), &mine, sizeof(mine));
  h.publish_input();
  h.wait_input();
  std::vector<Published> peer(n);
  for (int p = 0; p < n; ++p) std::memcpy(&peer[p], h.staging(p), sizeof(Published));

  const BlockLayout L(args.count, n);
  const size_t lo = L.offset(me), count = L.size(me);
  const size_t piece = std::max<size_t>(1, std::min(kPieceBytes / es, count));
  Scratch land(static_cast<size_t>(n) * piece * es);
  std::vector<const void*> srcs(n);
  for (size_t at = 0; at < count; at += piece) {
    const size_t k = std::min(piece, count - at), off = (lo + at) * es;
    for (int p = 0; p < n; ++p) {
      if (p == me) {
        srcs[p] = in + off;
        continue;
      }
      char* to = land.data() + static_cast<size_t>(p) * piece * es;
      read_from(h, p, to, peer[p].in + off, k * es);
      srcs[p] = to;
    }
    cpu::reduce(red.kernel_op, args.dtype, out + off, srcs.data(), n, k, red.post_scale);
  }
  h.publish_result();
  h.wait_result();
  for (int p = 0; p < n; ++p)
    if (p != me && L.size(p))
      read_from(h, p, out + L.offset(p) * es, peer[p].out + L.offset(p) * es, L.size(p) * es);
  h.finish();
  h.wait_finished();
}

}  // namespace plexus
