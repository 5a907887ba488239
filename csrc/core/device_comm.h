// The native device path of one group on one host: a workspace per rank (signal pad + two
// scratch sets), allocated and mapped once, and collectives that are kernels on the caller's
// stream synchronising through the pads (csrc/algorithms/device_programs.h). A call costs the
// host a launch per chunk of the scratch size (all_to_all: one), never a host round with its
// peers; point-to-point messages run on lanes beside the caller's stream. What fails on
// the device (a deadline, a mismatched call, an abort, a failing peer) lands in an error box the
// host reads at the next call or wait, and from then on every call raises it.
//
// Setup is the caller's (plexus.device.native): handle() of every rank goes round the group
// once, connect() maps them, seal() after every rank has mapped.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/fork.h"
#include "base/types.h"
#include "core/device_lanes.h"
#include "transport/cuda_ipc/signal_pad.h"
#include "transport/cuda_ipc/workspace.h"

namespace plexus {

class DeviceComm {
 public:
  // `emulated`: the tests' device (shared host memory, calls run on the calling thread).
  // `names`: the global rank of each group rank, for messages.
  DeviceComm(int rank, int world, int device, bool emulated, size_t scratch_bytes, double timeout_s,
             std::vector<int> names);
  ~DeviceComm();
  DeviceComm(const DeviceComm&) = delete;
  DeviceComm& operator=(const DeviceComm&) = delete;

  std::string handle() const;
  // Maps every rank's workspace; `blocks`: the group's grid, the smallest of its ranks' blocks().
  void connect(const std::vector<std::string>& handles, int blocks);
  void seal();

  // Enqueued on `stream` (a cudaStream_t; ignored when emulated, where the call runs now).
  // Counts are elements: the whole buffer, or one rank's block for all_gather / reduce_scatter.
  void all_reduce(const void* in, void* out, size_t count, DType dtype, RedOp op, double scale, void* stream);
  void reduce(const void* in, void* out, size_t count, DType dtype, RedOp op, double scale, int root, void* stream);
  void broadcast(const void* in, void* out, size_t count, DType dtype, int root, void* stream);
  void all_gather(const void* in, void* out, size_t count, DType dtype, void* stream);
  // The list form: rank q's block into outs[q] (one output per rank).
  void all_gather_list(const void* in, const std::vector<void*>& outs, size_t count, DType dtype, void* stream);
  void reduce_scatter(const void* in, void* out, size_t count, DType dtype, RedOp op, double scale, void* stream);
  // Rooted lists: every rank's block of `count` into outs[q] of the root (outs: empty elsewhere),
  // and ins[q] of the root into `out` of rank q (ins: empty elsewhere).
  void gather(const void* in, const std::vector<void*>& outs, size_t count, DType dtype, int root, void* stream);
  void scatter(const std::vector<const void*>& ins, void* out, size_t count, DType dtype, int root, void* stream);
  // ins[j] (sends[j] elements) to rank j, into outs[q] (receives[q] elements) from rank q: one
  // launch, whose kernel shares the sizes through the pads and checks every pair (a pair that
  // disagrees is a mismatch naming it), then moves the blocks a chunk of the scratch at a time.
  void all_to_all(const std::vector<const void*>& ins, const std::vector<uint64_t>& sends,
                  const std::vector<void*>& outs, const std::vector<uint64_t>& receives, DType dtype, void* stream);

  // Point-to-point: `count` elements of `buf` to (from) group rank `peer`, on this
  // communicator's lane for that peer and direction (core/device_lanes.h), after what `stream`
  // holds now: one launch that goes round the message's chunks, a slot of the peer's inbox each
  // (device_programs.h, message()). The n-th send of a rank to a peer meets that peer's n-th
  // receive from it; one of another size or dtype is a mismatch naming both. The caller calls
  // check() once the work is done.
  std::shared_ptr<LaneWork> send(const void* buf, size_t count, DType dtype, int peer, void* stream);
  std::shared_ptr<LaneWork> recv(void* buf, size_t count, DType dtype, int peer, void* stream);
  size_t slot_bytes() const { return slot_; }
  // Whether a message of this communicator has not finished (one whose peer never came would
  // wait on the GPU until its deadline: the caller aborts before it waits for the device).
  bool messages_pending();

  // Registered buffers (windows): `ptr`, `bytes` here and the same buffer of every rank mapped
  // here (`peers`, own included). An all_reduce whose input and output lie in windows, of at
  // least PLEXUS_DEVICE_DIRECT_MIN bytes, reads and writes them in place (kDirectAllReduce):
  // every rank must then pass the same windows at the same offsets (the signature says so).
  uint32_t add_window(const void* ptr, size_t bytes, const std::vector<uintptr_t>& peers);
  void remove_window(uint32_t id);
  // Whether all_reduce(in, out) of `bytes` would read and write registered windows in place.
  bool in_windows(const void* in, const void* out, size_t bytes) const;

  // An all_reduce in place between arrays that every rank mapped for this call (`peer_in`,
  // `peer_out`: every rank's input and output here, own included): the caller
  // (plexus.device.mapped) exchanged their handles, so every rank calls it alike. For calls of
  // at least mapped_min() bytes (PLEXUS_DEVICE_MAPPED_MIN), where a host round costs less than
  // the staging copies it saves.
  void all_reduce_mapped(const void* in, void* out, size_t count, DType dtype, RedOp op, double scale,
                         const std::vector<uintptr_t>& peer_in, const std::vector<uintptr_t>& peer_out, void* stream);
  size_t mapped_min() const { return mapped_min_; }
  void set_mapped_min(size_t bytes) { mapped_min_ = bytes; }  // what the group agreed on

  // Throws the first error the device reported (Timeout, PeerError, or Error), if any; in a
  // fork()ed child, that the group is its parent's (every call begins here).
  void check();
  // Makes every kernel of this communicator that waits give up (then check() throws); nothing in
  // a forked child, whose abort would reach the parent's kernels through the shared error box.
  void abort();
  // The all_reduce program for `bytes`, and why ("oneshot: ..." / "twoshot: ...").
  std::string explain_all_reduce(size_t bytes) const;
  size_t scratch_bytes() const { return scratch_; }
  int blocks() const { return blocks_; }
  uint64_t direct_calls() const { return direct_calls_; }
  uint64_t mapped_calls() const { return mapped_calls_; }

 private:
  size_t workspace_bytes() const;  // pad, scratch sets, inboxes
  std::shared_ptr<LaneWork> message(signals::Program program, const void* in, void* out, size_t count, DType dtype,
                                    int peer, void* stream);
  // Runs one launch now (emulated) or enqueues it on `stream`, without check().
  void launch_unchecked(const signals::DeviceCall& call, void* stream);
  signals::DeviceCall base_call(CollKind kind, DType dtype, RedOp op, size_t count, int root, double scale) const;
  void launch(signals::DeviceCall& call, void* stream);
  // Launches `call` per chunk of `chunk` elements, moving in and out (or every output of `outs`).
  // `ins`: one input per rank instead (kScatter's at its root).
  void run_chunks(signals::DeviceCall& call, const void* in, void* out, size_t count, size_t chunk, void* stream,
                  const std::vector<void*>* outs = nullptr, const std::vector<const void*>* ins = nullptr);
  // check(), the root, and a list of one entry per rank at the root and none elsewhere: at the root?
  bool check_rooted_list(const char* kind, const char* what, size_t listed, int root);
  // Elements of one chunk when a scratch set holds one block of it per rank (whole 16-byte grains).
  size_t per_rank_chunk(DType dtype) const;
  signals::Program all_reduce_program(size_t bytes) const;
  size_t one_shot_max() const;  // all_reduce bytes up to which one-shot runs
  struct Window {
    uint32_t id;
    uintptr_t lo, hi;
    std::vector<uintptr_t> peers;
  };
  const Window* window_of(const void* p, size_t bytes) const;
  bool direct_all_reduce(const void* in, void* out, size_t count, DType dtype, RedOp op, double scale, void* stream);
  // kDirectAllReduce on every rank's `peer_in` / `peer_out`; `marks` names the windows (or the
  // per-call mapping) in the record and the signature, so a rank that staged instead mismatches.
  void launch_direct(const void* in, void* out, size_t count, DType dtype, RedOp op, double scale,
                     const uintptr_t* peer_in, const uintptr_t* peer_out, const signals::CallRecord& marks, void* stream);

  int rank_, world_, device_;
  bool emulated_;
  size_t scratch_;
  size_t slot_;  // of an inbox slot: kInboxSlots per peer fill as much as one scratch set
  int blocks_;
  uint64_t timeout_ns_;
  std::string forced_;  // PLEXUS_DEVICE_ALGO, read once
  size_t direct_min_;   // PLEXUS_DEVICE_DIRECT_MIN
  size_t mapped_min_;   // PLEXUS_DEVICE_MAPPED_MIN
  std::vector<Window> windows_;
  uint32_t next_window_ = 0;
  uint64_t direct_calls_ = 0;
  uint64_t mapped_calls_ = 0;
  std::vector<int> names_;
  std::unique_ptr<WorkspaceMemory> memory_;
  char* own_ = nullptr;
  std::vector<char*> peers_;  // every rank's workspace mapped here (own included)
  bool connected_ = false;
  std::mutex lanes_mu_;  // lanes are made at their first message, and each takes one call at a time
  std::unique_ptr<Lane> lanes_[2][signals::kMaxRanks];  // [receiving][peer]
  std::string failure_;  // set once check() has seen an error: every later call throws it
  int failure_kind_ = 0;
  int failure_peer_ = -1;
  int generation_ = fork_generation();  // of the process that made it
};

}  // namespace plexus
