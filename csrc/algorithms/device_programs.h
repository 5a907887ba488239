// The device collectives of ranks that map each other's workspaces (one host): what one block of
// one launch does, written once for two executors: the CUDA kernel (device_kernels.cu: a block
// of threads, PTX acquire/release, %globaltimer) and the emulated device of the tests
// (device_emulated.cc: one CPU thread running the blocks in turn over shared memory). Each
// block handles its own slice of the data on every rank and synchronises only with the same
// block of its peers, so no grid-wide barrier is needed and a graph replays it as captured.
//
// Every program stages this rank's input into its own scratch set, passes a barrier (its flag
// into every peer's pad, then waits for theirs), and reads its peers' scratch sets:
//   one-shot all-reduce  block b reduces slice b of every rank's copy       (small messages)
//   two-shot all-reduce  rank r reduces part r of every copy into its scratch and its output,
//                        a second barrier, then copies the other parts from their owners
//   reduce-scatter       part r of every copy, reduced into the output
//   all-gather           every rank's copy into its block of the output (or its own output)
//   broadcast / reduce   the root's copy / every copy reduced at the root
//   gather / scatter     every copy into the root's outputs / the root's blocks, each to its rank
//   all-to-all           every rank's block j into rank j's output (blocks of any size: the
//                        sizes go round in the pads, a barrier per chunk, one launch)
//   direct all-reduce    registered buffers: rank r reduces part r of every rank's input and
//                        writes it into every rank's output, between two barriers (no staging)
// Executor X: leader(), sync(), sync_or(bool), broadcast(u64), load_acquire/store_release(u64*),
// load_volatile(u32*), publish(u32*, v) (a store that load_volatile sees whole, after what came
// before), cas(u32*, old, new), fence_system(), now_ns(), pause(), and the block's
// data movement copy(dst, src, bytes) and reduce(dsts, ndsts, srcs, nsrcs, n).
#pragma once

#include <cstddef>
#include <cstdint>

#include "transport/cuda_ipc/signal_pad.h"

namespace plexus {
namespace device_programs {

using namespace signals;

PLEXUS_HD inline size_t element_size(uint32_t dtype) {
  // DType order: float16, bfloat16, float32, float64, int8, uint8, int32, int64, bool
  constexpr unsigned char sizes[] = {2, 2, 4, 8, 1, 1, 4, 8, 1};
  return dtype < sizeof(sizes) ? sizes[dtype] : 1;
}

struct Range {
  uint64_t lo, hi;
  PLEXUS_HD uint64_t size() const { return hi - lo; }
};

// Part i of `parts` over [0, n): equal parts of whole `grain`s (16 bytes, so vector loads line
// up wherever the buffers do), the last one shorter.
PLEXUS_HD inline Range part(uint64_t n, int parts, int i, uint64_t grain) {
  uint64_t chunk = (n + parts - 1) / parts;
  chunk = (chunk + grain - 1) / grain * grain;
  uint64_t lo = chunk * i < n ? chunk * i : n;
  uint64_t hi = chunk * (i + 1) < n ? chunk * (i + 1) : n;
  return {lo, hi};
}

// Block b's share of the first `n` elements of a room of `room` elements cut alike for every n:
// a block that waited only for the same block of a peer never writes where another block of that
// peer may still read, though the chunk (or round) before was of another size.
PLEXUS_HD inline Range fixed_part(uint64_t n, uint64_t room, int parts, int b, uint64_t grain) {
  const Range r = part(room, parts, b, grain);
  return {r.lo < n ? r.lo : n, r.hi < n ? r.hi : n};
}

// Block b's share of part q (of `world`) of [0, n).
PLEXUS_HD inline Range sub(uint64_t n, int world, int q, int nblocks, int b, uint64_t grain) {
  Range p = part(n, world, q, grain);
  Range s = part(p.size(), nblocks, b, grain);
  return {p.lo + s.lo, p.lo + s.hi};
}

// Records an error of this rank: the first one marks its pad (peers set it too, when they
// fail), the first block to get here fills the error box, and a rank that failed by itself
// tells every peer, whose blocks then stop waiting for it.
template <class X>
PLEXUS_HD void fail(X& x, const DeviceCall& c, uint32_t code, int peer, int block, int phase, uint64_t seq,
                    const SizeMismatch* sizes = nullptr, const CallRecord* theirs = nullptr) {
  Pad* own = c.pads[c.rank];
  if (x.cas(&own->error, kOk, code)) x.publish(&own->error_from, static_cast<uint32_t>(c.rank));
  if (code != kPeerFailed) {
    for (int p = 0; p < c.world; ++p) {
      if (p == c.rank) continue;
      if (x.cas(&c.pads[p]->error, kOk, kPeerFailed)) x.publish(&c.pads[p]->error_from, static_cast<uint32_t>(c.rank));
    }
  }
  if (!x.cas(&own->reported, 0u, 1u)) return;
  ErrorBox* box = c.box;
  box->peer = static_cast<uint32_t>(peer);
  box->block = static_cast<uint32_t>(block);
  box->phase = static_cast<uint32_t>(phase);
  box->seq = seq;
  box->mine = c.record;
  box->mine.seq = seq;
  if (code == kMismatch && peer >= 0) box->theirs = theirs ? *theirs : c.pads[peer]->records[seq & 1];
  if (sizes) box->sizes = *sizes;
  x.fence_system();
  x.publish(&box->code, code);  // last: the host reads the rest once it sees it
}

// This rank's pad says it failed (a peer told it, or another of its blocks): report that
// (unless a block did already) and give up.
template <class X>
PLEXUS_HD void fail_from_pad(X& x, const DeviceCall& c, uint32_t err, int block, int phase, uint64_t seq) {
  const int from = static_cast<int>(x.load_volatile(&c.pads[c.rank]->error_from));
  fail(x, c, err == kPeerFailed ? kPeerFailed : err, err == kPeerFailed ? from : -1, block, phase, seq);
}

// The leader waits until `*value` reaches `least` (written by peer `p`) and gets what it saw.
// False (after fail()) on the deadline, the host's abort, or an error of this rank or a peer.
template <class X>
PLEXUS_HD bool wait_at_least(X& x, const DeviceCall& c, const uint64_t* value, uint64_t least, int p, int block,
                             int phase, uint64_t seq, uint64_t start, uint64_t* seen) {
  Pad* own = c.pads[c.rank];
  for (uint32_t spins = 1;; ++spins) {
    *seen = x.load_acquire(value);
    if (*seen >= least) return true;
    if ((spins & 63) == 0) {
      const uint32_t err = x.load_volatile(&own->error);
      if (err != kOk) {
        fail_from_pad(x, c, err, block, phase, seq);
        return false;
      }
      if (x.load_volatile(&c.box->abort)) {
        fail(x, c, kAborted, p, block, phase, seq);
        return false;
      }
      if (x.now_ns() - start > c.timeout_ns) {
        fail(x, c, kTimeout, p, block, phase, seq);
        return false;
      }
    }
    x.pause();
  }
}

// The leader waits for peer `p`'s flag of call `seq`. False (after fail()) on a mismatch, or
// whatever ends wait_at_least.
template <class X>
PLEXUS_HD bool wait_flag(X& x, const DeviceCall& c, int p, int block, int phase, uint64_t seq, uint64_t start) {
  uint64_t v = 0;
  if (!wait_at_least(x, c, &c.pads[c.rank]->flags[seq & 1][phase][block][p], seq << kSigBits, p, block, phase, seq,
                     start, &v))
    return false;
  if ((v >> kSigBits) == seq && (v & kSigMask) == c.sig) return true;
  fail(x, c, kMismatch, p, block, phase, seq);
  return false;
}

// Block `b` of every rank meets here: what each wrote before is visible to all after.
template <class X>
PLEXUS_HD bool barrier(X& x, const DeviceCall& c, int b, int phase, uint64_t seq, uint64_t start) {
  bool bad = false;
  x.sync();
  if (x.leader()) {
    x.fence_system();
    const uint64_t value = (seq << kSigBits) | c.sig;
    for (int p = 0; p < c.world; ++p)
      if (p != c.rank) x.store_release(&c.pads[p]->flags[seq & 1][phase][b][c.rank], value);
    for (int i = 1; i < c.world && !bad; ++i) {
      const int p = (c.rank + i) % c.world;
      bad = !wait_flag(x, c, p, b, phase, seq, start);
    }
  }
  return !x.sync_or(bad);
}

// Block b's next call number (or the next round of a call that has several), for every thread of
// the block; block 0 files the call's record under it.
template <class X>
PLEXUS_HD uint64_t next_seq(X& x, const DeviceCall& c, int b) {
  Pad* own = c.pads[c.rank];
  uint64_t seq = 0;
  if (x.leader()) {
    seq = own->counters[b] + 1;
    own->counters[b] = seq;
    if (b == 0) {
      own->records[seq & 1] = c.record;
      own->records[seq & 1].seq = seq;
    }
  }
  return x.broadcast(seq);
}

// Whether this rank's pad says it failed (a failed communicator stays failed): then the block
// reports it for call `seq` (unless one did already) and gives up.
template <class X>
PLEXUS_HD bool failed_already(X& x, const DeviceCall& c, int b, uint64_t seq) {
  const uint32_t err = x.load_volatile(&c.pads[c.rank]->error);
  if (err == kOk) return false;
  if (x.leader()) fail_from_pad(x, c, err, b, 0, seq);
  return true;
}

// Elements of a block of `size` in the round that starts at element `at` (rounds of `chunk`).
PLEXUS_HD inline uint64_t round_of(uint64_t size, uint64_t at, uint64_t chunk) {
  return at >= size ? 0 : size - at < chunk ? size - at : chunk;
}

// A pair's room in each round of an all_to_all: alike in every round of the call, so the blocks'
// shares (fixed_part) stay put from round to round, and no larger than the pair's block, so
// every block moves a share of a block that fits one round.
PLEXUS_HD inline uint64_t room(uint64_t size, uint64_t chunk) { return size < chunk ? size : chunk; }

// kAllToAll, blocks of any size in one launch. Round k moves chunk k (c.stride elements) of every
// block: each rank stages its blocks for its peers at j * stride of its scratch, meets them, and
// copies its own blocks from theirs. Before round 0 each rank publishes its block sizes in its pad,
// so after that barrier every rank checks the pairs it is in, itself included (both ends of a pair
// that disagrees fail, naming it; the other ranks hear of it at once, or, on a GPU where their
// blocks may be done already, at their next call) and knows how many rounds the group's largest
// block takes: no host round.
template <class X>
PLEXUS_HD void all_to_all(X& x, const DeviceCall& c, int b, uint64_t seq, uint64_t start) {
  const int r = c.rank, w = c.world, G = c.nblocks;
  const uint64_t es = element_size(c.dtype), grain = 16 / es, chunk = c.stride;
  if (x.leader()) {
    uint64_t* sizes = c.pads[r]->sizes[seq & 1][b];
    for (int j = 0; j < w; ++j) {
      sizes[j] = c.sends[j];
      sizes[kMaxRanks + j] = c.receives[j];
    }
  }
  uint64_t largest = 0;
  for (uint64_t at = 0;; at += chunk) {
    char* mine = c.scratch[r] + (seq & 1) * c.scratch_bytes;
    for (int j = 0; j < w; ++j) {
      if (j == r) continue;
      const Range s = fixed_part(round_of(c.sends[j], at, chunk), room(c.sends[j], chunk), G, b, grain);
      x.copy(mine + (j * chunk + s.lo) * es, c.peer_in[j] + (at + s.lo) * es, s.size() * es);
    }
    if (!barrier(x, c, b, 0, seq, start)) return;
    if (at == 0) {
      bool bad = false;
      if (x.leader()) {
        for (int q = 0; q < w && !bad; ++q) {
          const uint64_t* theirs = c.pads[q]->sizes[seq & 1][b];
          for (int j = 0; j < w; ++j) {
            largest = theirs[j] > largest ? theirs[j] : largest;
            largest = theirs[kMaxRanks + j] > largest ? theirs[kMaxRanks + j] : largest;
          }
          SizeMismatch m;  // (q == r: the block a rank sends itself must be what it expects too)
          if (theirs[r] != c.receives[q]) {
            m.from = static_cast<uint32_t>(q), m.to = static_cast<uint32_t>(r), m.sent = theirs[r], m.expected = c.receives[q];
          } else if (theirs[kMaxRanks + r] != c.sends[q]) {
            m.from = static_cast<uint32_t>(r), m.to = static_cast<uint32_t>(q), m.sent = c.sends[q];
            m.expected = theirs[kMaxRanks + r];
          } else {
            continue;
          }
          fail(x, c, kSizeMismatch, q == r ? -1 : q, b, 0, seq, &m);
          bad = true;
        }
      }
      if (x.sync_or(bad)) return;
      largest = x.broadcast(largest);
    }
    for (int q = 0; q < w; ++q) {  // rank q staged its chunk for r (c.receives[q] = its sends[r]) alike
      const Range s = fixed_part(round_of(c.receives[q], at, chunk), room(c.receives[q], chunk), G, b, grain);
      const char* from = q == r ? c.peer_in[r] + (at + s.lo) * es
                                : c.scratch[q] + (seq & 1) * c.scratch_bytes + (r * chunk + s.lo) * es;
      x.copy(c.peer_out[q] + (at + s.lo) * es, from, s.size() * es);
    }
    if (at + chunk >= largest) return;
    seq = next_seq(x, c, b);
    start = x.now_ns();  // the deadline holds per round: a call of many rounds may take longer
    if (failed_already(x, c, b, seq)) return;  // a failed rank stops going round
  }
}

// Where rank `owner` keeps slot `slot` of what rank `from` sends it: its inbox, after its scratch sets.
PLEXUS_HD inline char* inbox(const DeviceCall& c, int owner, int from, uint64_t slot) {
  return c.scratch[owner] + 2 * c.scratch_bytes + (static_cast<uint64_t>(from) * kInboxSlots + slot) * c.slot_bytes;
}

// kSend / kRecv: a message between this rank and c.peer, one launch that goes round its chunks
// (a slot each; a message of 0 elements is one empty chunk, so a receiver that expects another
// size still hears of it). Block b of both ends moves its share of every chunk, a share fixed
// for the slot whatever the chunk's size, because it waits only for block b of the other end.
// The pair numbers its chunks (each end counts in its own pad, so a replayed graph counts on):
// chunk n goes through slot n % kInboxSlots of the receiver's inbox. The sender waits until the
// receiver has taken chunk n - kInboxSlots from that slot, copies chunk n in and flags it ready
// with the message's signature; the receiver waits for that flag, checks the signature (another
// size or dtype fails both ends, naming both calls), copies the chunk out and says it took it.
// Collectives and messages share no flags, so neither waits for the other. The deadline holds
// per chunk.
template <class X>
PLEXUS_HD void message(X& x, const DeviceCall& c, int b) {
  const int r = c.rank, p = c.peer;
  const bool sending = c.program == kSend;
  Pad* own = c.pads[r];
  const uint64_t es = element_size(c.dtype), grain = 16 / es, chunk = c.slot_bytes / es;
  uint64_t at = 0;
  do {
    const uint64_t start = x.now_ns();
    uint64_t n = 0;
    if (x.leader()) {
      uint64_t* counter = sending ? &own->sent[p][b] : &own->received[p][b];
      n = *counter + 1;
      *counter = n;
    }
    n = x.broadcast(n);
    if (failed_already(x, c, b, n)) return;
    const uint64_t slot = n % kInboxSlots;
    const Range s = fixed_part(round_of(c.count, at, chunk), chunk, c.nblocks, b, grain);
    bool bad = false;
    uint64_t seen = 0;
    if (sending) {
      if (x.leader() && n > kInboxSlots)
        bad = !wait_at_least(x, c, &own->taken[p][b], n - kInboxSlots, p, b, 0, n, start, &seen);
      if (x.sync_or(bad)) return;
      x.copy(inbox(c, p, r, slot) + s.lo * es, static_cast<const char*>(c.in) + (at + s.lo) * es, s.size() * es);
      x.sync();
      if (x.leader()) {
        CallRecord mine = c.record;
        mine.seq = n;
        c.pads[p]->messages[r][slot] = mine;  // (every block writes the same record)
        x.fence_system();
        x.store_release(&c.pads[p]->ready[r][slot][b], (n << kSigBits) | c.sig);
      }
    } else {
      if (x.leader()) {
        bad = !wait_at_least(x, c, &own->ready[p][slot][b], n << kSigBits, p, b, 0, n, start, &seen);
        if (!bad && ((seen >> kSigBits) != n || (seen & kSigMask) != c.sig)) {
          fail(x, c, kMismatch, p, b, 0, n, nullptr, &own->messages[p][slot]);
          bad = true;
        }
      }
      if (x.sync_or(bad)) return;
      x.copy(static_cast<char*>(c.out) + (at + s.lo) * es, inbox(c, r, p, slot) + s.lo * es, s.size() * es);
      x.sync();
      if (x.leader()) {
        x.fence_system();
        x.store_release(&c.pads[p]->taken[r][b], n);
      }
    }
    at += chunk;
  } while (at < c.count);
}

template <class X>
PLEXUS_HD void run_block(X& x, const DeviceCall& c, int b) {
  if (c.program == kSend || c.program == kRecv) return message(x, c, b);  // the pair's own counters
  const uint64_t start = x.now_ns();
  const uint64_t seq = next_seq(x, c, b);
  if (failed_already(x, c, b, seq)) return;

  const int r = c.rank, w = c.world, G = c.nblocks;
  const uint64_t es = element_size(c.dtype), grain = 16 / es, n = c.count;
  const uint64_t set = (seq & 1) * c.scratch_bytes;
  char* mine = c.scratch[r] + set;
  const char* in = static_cast<const char*>(c.in);
  char* out = static_cast<char*>(c.out);
  const void* srcs[kMaxRanks];
  void* dsts[kMaxRanks];

  switch (c.program) {
    case kOneShotAllReduce:
    case kReduce: {
      const Range s = part(n, G, b, grain);
      x.copy(mine + s.lo * es, in + s.lo * es, s.size() * es);
      if (!barrier(x, c, b, 0, seq, start)) return;
      if (c.program == kReduce && r != c.root) return;
      for (int q = 0; q < w; ++q) srcs[q] = c.scratch[q] + set + s.lo * es;
      dsts[0] = out + s.lo * es;
      x.reduce(dsts, 1, srcs, w, s.size());
      return;
    }
    case kTwoShotAllReduce: {
      for (int q = 0; q < w; ++q) {  // the parts the peers reduce: part r is read from `in` below
        if (q == r) continue;
        const Range s = sub(n, w, q, G, b, grain);
        x.copy(mine + s.lo * es, in + s.lo * es, s.size() * es);
      }
      if (!barrier(x, c, b, 0, seq, start)) return;
      const Range s = sub(n, w, r, G, b, grain);
      for (int q = 0; q < w; ++q) srcs[q] = (q == r ? in : c.scratch[q] + set) + s.lo * es;
      dsts[0] = mine + s.lo * es;  // the result, for the peers to copy (nobody reads part r of it)
      dsts[1] = out + s.lo * es;   // may be `in`: each element is read before it is written
      x.reduce(dsts, 2, srcs, w, s.size());
      if (!barrier(x, c, b, 1, seq, start)) return;
      for (int q = 0; q < w; ++q) {
        if (q == r) continue;
        const Range t = sub(n, w, q, G, b, grain);
        x.copy(out + t.lo * es, c.scratch[q] + set + t.lo * es, t.size() * es);
      }
      return;
    }
    case kReduceScatter: {
      const Range s = part(n, G, b, grain);
      for (int q = 0; q < w; ++q)
        x.copy(mine + (q * n + s.lo) * es, in + (q * c.stride + s.lo) * es, s.size() * es);
      if (!barrier(x, c, b, 0, seq, start)) return;
      for (int q = 0; q < w; ++q) srcs[q] = c.scratch[q] + set + (r * n + s.lo) * es;
      dsts[0] = out + s.lo * es;
      x.reduce(dsts, 1, srcs, w, s.size());
      return;
    }
    case kAllGather: {
      const Range s = part(n, G, b, grain);
      x.copy(mine + s.lo * es, in + s.lo * es, s.size() * es);
      if (!barrier(x, c, b, 0, seq, start)) return;
      for (int q = 0; q < w; ++q) {
        const char* from = q == r ? in + s.lo * es : c.scratch[q] + set + s.lo * es;
        char* to = c.listed ? c.peer_out[q] + s.lo * es : out + (q * c.stride + s.lo) * es;
        x.copy(to, from, s.size() * es);
      }
      return;
    }
    case kBroadcast: {
      const Range s = part(n, G, b, grain);
      if (r == c.root) x.copy(mine + s.lo * es, in + s.lo * es, s.size() * es);
      if (!barrier(x, c, b, 0, seq, start)) return;
      const char* from = r == c.root ? in + s.lo * es : c.scratch[c.root] + set + s.lo * es;
      x.copy(out + s.lo * es, from, s.size() * es);
      return;
    }
    case kGather: {  // the root copies its own block straight from its input
      const Range s = part(n, G, b, grain);
      if (r != c.root) x.copy(mine + s.lo * es, in + s.lo * es, s.size() * es);
      if (!barrier(x, c, b, 0, seq, start)) return;
      if (r != c.root) return;
      for (int q = 0; q < w; ++q)
        x.copy(c.peer_out[q] + s.lo * es, q == r ? in + s.lo * es : c.scratch[q] + set + s.lo * es, s.size() * es);
      return;
    }
    case kScatter: {  // the root stages block q (of n) for rank q at q * n of its scratch
      const Range s = part(n, G, b, grain);
      if (r == c.root)
        for (int q = 0; q < w; ++q)
          if (q != r) x.copy(mine + (q * n + s.lo) * es, c.peer_in[q] + s.lo * es, s.size() * es);
      if (!barrier(x, c, b, 0, seq, start)) return;
      const char* from = r == c.root ? c.peer_in[r] + s.lo * es : c.scratch[c.root] + set + (r * n + s.lo) * es;
      x.copy(out + s.lo * es, from, s.size() * es);
      return;
    }
    case kAllToAll:
      all_to_all(x, c, b, seq, start);
      return;
    case kDirectAllReduce: {  // no staging: the peers' inputs and outputs are mapped
      if (!barrier(x, c, b, 0, seq, start)) return;  // every input is ready
      const Range s = sub(n, w, r, G, b, grain);
      for (int q = 0; q < w; ++q) {
        srcs[q] = c.peer_in[q] + s.lo * es;
        dsts[q] = c.peer_out[q] + s.lo * es;
      }
      x.reduce(dsts, w, srcs, w, s.size());
      barrier(x, c, b, 1, seq, start);  // every output is written, no input is read any more
      return;
    }
    default:
      return;
  }
}

}  // namespace device_programs
}  // namespace plexus
