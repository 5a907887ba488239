// The signal pad: what the ranks of one host that share device memory write into each other's
// workspace to synchronise without the host (csrc/transport/cuda_ipc). Plain C++ that both
// nvcc (kernels) and the host compiler (the emulated device of the tests) compile, so the
// protocol the GPU runs is the one the CPU tests run between real processes.
//
// A rank's workspace is one allocation: its Pad, two scratch sets, then an inbox per peer for
// point-to-point messages (two slots each, see kSend below). Each call (one
// kernel, per block of the grid) takes the next value `seq` of that block's own counter;
// `seq & 1` picks the flag set and the scratch set, so a fast peer writing call seq+1 never
// overwrites what a slow one still reads of call seq (the peer cannot reach seq+2 before this
// rank has reached seq+1). A flag holds (seq << kSigBits) | signature: counters only increase,
// and a peer that made another call is seen at the same moment as one that arrived.
#pragma once

#include <cstddef>
#include <cstdint>

#ifdef __CUDACC__
#define PLEXUS_HD __host__ __device__
#else
#define PLEXUS_HD
#endif

namespace plexus {
namespace signals {

constexpr int kMaxRanks = 8;    // ranks of one host a device communicator spans
constexpr int kMaxBlocks = 128;  // blocks of one collective kernel
constexpr int kPhases = 2;      // barriers per call (two-shot: before the reduce and before the gather)
constexpr int kSigBits = 24;
constexpr uint64_t kSigMask = (uint64_t{1} << kSigBits) - 1;
constexpr size_t kPadBytes = 128 * 1024;  // the Pad, rounded up: scratch starts 128 KiB in

constexpr uint32_t kMappedWindow = 0xFFFFFFFFu;

// CallRecord kinds of point-to-point messages (beyond CollKind's).
constexpr uint32_t kSendKind = 100, kRecvKind = 101;
constexpr int kInboxSlots = 2;  // a sender writes slot n+1 while its receiver still reads slot n

// What a call was, for the error that names both calls of a mismatch.
struct CallRecord {
  uint64_t seq = 0;
  uint64_t count = 0;
  uint32_t kind = 0;  // CollKind
  uint32_t dtype = 0;
  uint32_t op = 0;
  int32_t root = -1;
  uint32_t window = 0;  // registered buffers read in place: 1 + the window of the input, else 0
                        // (kMappedWindow: arrays mapped for this one call)
  uint32_t window_out = 0;
  uint64_t offset = 0;  // of the input in its window (the output's: offset_out)
  uint64_t offset_out = 0;
};

struct Pad {
  uint64_t counters[kMaxBlocks];  // this rank's blocks' call counters (only they touch them)
  uint64_t flags[2][kPhases][kMaxBlocks][kMaxRanks];  // [set][phase][block][source rank], written by peers
  CallRecord records[2];  // this rank's call of each set, written by its block 0
  // kAllToAll: this rank's block sizes (elements to each rank, then from each), per set and
  // block: each block publishes them before its first barrier, for the same block of its peers.
  uint64_t sizes[2][kMaxBlocks][2 * kMaxRanks];
  // Point-to-point, per peer p and block (kSend / kRecv): this rank's own counters of messages
  // to and from p; written by p: its message n is in this rank's inbox for p ((n << kSigBits) |
  // signature), and it has taken this rank's message n from its inbox (n); p's message record.
  uint64_t sent[kMaxRanks][kMaxBlocks];
  uint64_t received[kMaxRanks][kMaxBlocks];
  uint64_t ready[kMaxRanks][kInboxSlots][kMaxBlocks];  // per slot: exact until the receiver took it
  uint64_t taken[kMaxRanks][kMaxBlocks];
  CallRecord messages[kMaxRanks][kInboxSlots];
  uint32_t error;         // first ErrorCode of this rank (set by its blocks, or by a failing peer)
  uint32_t error_from;    // the rank that set it
  uint32_t reported;      // 1 once one of this rank's blocks has filled the error box
};
static_assert(sizeof(Pad) <= kPadBytes, "the pad outgrew its room");

// kSizeMismatch: an all_to_all whose two ranks disagree on the size of the block between them.
enum ErrorCode : uint32_t { kOk = 0, kTimeout = 1, kMismatch = 2, kAborted = 3, kPeerFailed = 4, kSizeMismatch = 5 };

// What kSizeMismatch found: rank `from` sends `sent` elements to rank `to`, which expects `expected`.
struct SizeMismatch {
  uint32_t from = 0, to = 0;
  uint64_t sent = 0, expected = 0;
};

// In host-readable memory (mapped pinned memory on a GPU): how a kernel failed. `code` is
// written last; the host sets `abort` to make spinning kernels give up.
struct ErrorBox {
  volatile uint32_t code;
  uint32_t peer;
  uint32_t block;
  uint32_t phase;
  uint64_t seq;
  CallRecord mine;
  CallRecord theirs;
  SizeMismatch sizes;  // kSizeMismatch's pair
  volatile uint32_t abort;
};

// The programs one kernel runs (csrc/algorithms/device_programs.h).
enum Program : uint32_t {
  kOneShotAllReduce = 0,  // every rank reduces every rank's scratch copy
  kTwoShotAllReduce,      // reduce-scatter through the scratches, then all-gather of the results
  kReduceScatter,
  kAllGather,
  kBroadcast,
  kReduce,
  kDirectAllReduce,       // registered buffers: rank r reduces part r of every input into every output
  kGather,                // every rank's copy into the root's outputs (peer_out[])
  kScatter,               // the root's inputs (peer_in[]) through its scratch to every rank
  kAllToAll,              // block j of peer_in[] to rank j, through the scratches, into peer_out[]:
                          // one launch, a barrier per chunk of the group's largest block
  kSend,                  // a message into rank `peer`'s inbox for this rank, a slot-sized chunk at a time
  kRecv,                  // a message out of this rank's inbox for rank `peer`, likewise
  kProgramCount,
};

// One launch: everything a block needs, passed by value (a CUDA graph replays it as captured).
struct DeviceCall {
  Pad* pads[kMaxRanks];        // every rank's pad, mapped here (own at [rank])
  char* scratch[kMaxRanks];    // every rank's scratch set 0, mapped here; set 1 follows it
  const char* peer_in[kMaxRanks];  // kDirectAllReduce: every rank's input and output, mapped here
  char* peer_out[kMaxRanks];       // (kAllGather with `listed`, kGather: this rank's output per source
                                   // rank; kScatter: the root's input per destination in peer_in)
  uint32_t listed = 0;             // kAllGather: the outputs are peer_out[], not blocks of `out`
  uint64_t sends[kMaxRanks];       // kAllToAll: elements to each rank (from peer_in[])
  uint64_t receives[kMaxRanks];    // and from each rank (into peer_out[])
  uint64_t scratch_bytes = 0;  // of one set
  uint64_t slot_bytes = 0;     // of one inbox slot (kInboxSlots per peer after the scratch sets)
  int peer = -1;               // kSend / kRecv: the other end
  ErrorBox* box = nullptr;
  const void* in = nullptr;
  void* out = nullptr;
  uint64_t count = 0;   // elements: the whole chunk (all_reduce, broadcast, reduce), one rank's block (the others)
  uint64_t stride = 0;  // elements between rank blocks of the blocked buffer (reduce_scatter's input, all_gather's
                        // output); kAllToAll: of one chunk of a block, the scratch's room per rank
  uint32_t program = 0;
  uint32_t dtype = 0;
  uint32_t op = 0;
  uint32_t sig = 0;
  int rank = 0;
  int world = 1;
  int root = 0;
  int nblocks = 1;
  double scale = 1.0;  // applied after a floating-point reduction (avg, premul_sum)
  uint64_t timeout_ns = 0;
  CallRecord record;   // this call (seq filled in by the kernel)
};

// 24 bits of a call's signature (kind, dtype, op, count, root, and the registered windows it
// reads in place, which every rank must use alike): equal calls agree, and different ones
// disagree but for a collision (1 in 2^24), which goes unnoticed; the records in the pads only
// name both calls in the error.
inline uint32_t signature(uint32_t kind, uint32_t dtype, uint32_t op, uint64_t count, int32_t root,
                          const CallRecord* windows = nullptr) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xFF;
      h *= 1099511628211ull;
    }
  };
  mix(kind);
  mix(dtype);
  mix(op);
  mix(count);
  mix(static_cast<uint32_t>(root));
  if (windows) {
    mix(windows->window);
    mix(windows->window_out);
    mix(windows->offset);
    mix(windows->offset_out);
  }
  return static_cast<uint32_t>((h ^ (h >> 24) ^ (h >> 48)) & kSigMask);
}

}  // namespace signals
}  // namespace plexus
