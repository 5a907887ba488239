#include "core/device_comm.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <unistd.h>

#include "algorithms/device_collectives.h"
#include "base/config.h"
#include "base/error.h"
#ifdef PLEXUS_WITH_CUDA
#include "transport/cuda_ipc/cuda_ipc.h"
#endif

namespace plexus {

using namespace signals;

namespace {

constexpr size_t kMinScratch = 1024;
// Blocks of a point-to-point launch: a message has one peer to write to, and its kernels run
// beside the collectives (and the other lanes) of every rank sharing the GPU.
constexpr int kMessageBlocks = 8;
constexpr size_t kDefaultScratch = 8u << 20;
// all_reduce bytes up to which one-shot runs (one barrier); above, two-shot moves fewer bytes:
// per rank (5 - 2/w) times the call's bytes against one-shot's (3 + w) times.
// On an H200 with 4 ranks one-shot still won at 2 MiB (27.5 us against 35.2) and 4 MiB (47.5
// against 50.6): the extra barrier costs more than the bytes saved until a few MiB.
constexpr size_t kOneShotMax = 2u << 20;
constexpr size_t kOneShotMax2 = 1u << 20;  // 2 ranks: 4 against 5, a smaller gain for the extra barrier
constexpr uint32_t kNoOp = 0xFF;
constexpr size_t kDirectMin = 1u << 20;  // registered all_reduce bytes from which staging is skipped
// all_reduce bytes from which the ranks' arrays are mapped per call (plexus.device.mapped): the
// host round (two small host all-gathers and the exports, tens of us) then costs less GPU time
// than the staging copies it saves; two-shot moves (5 - 2/w) times the bytes per rank, in place 2.
constexpr size_t kMappedMin = 16u << 20;

uint64_t round_up(uint64_t v, uint64_t m) { return (v + m - 1) / m * m; }

std::string describe(const CallRecord& r) {
  const bool reduces = r.op != kNoOp && r.op < static_cast<uint32_t>(RedOp::kNone);
  const bool rooted = r.kind == static_cast<uint32_t>(CollKind::kBroadcast) || r.kind == static_cast<uint32_t>(CollKind::kReduce) ||
                      r.kind == static_cast<uint32_t>(CollKind::kGather) || r.kind == static_cast<uint32_t>(CollKind::kScatter);
  std::string s = r.kind <= static_cast<uint32_t>(CollKind::kAllToAll) ? coll_name(static_cast<CollKind>(r.kind))
                   : r.kind == kSendKind                                  ? "send"
                   : r.kind == kRecvKind                                  ? "recv"
                                                                          : "kind " + std::to_string(r.kind);
  s += "(dtype ";
  s += r.dtype < static_cast<uint32_t>(DType::kCount) ? dtype_name(static_cast<DType>(r.dtype)) : std::to_string(r.dtype);
  s += ", count " + std::to_string(r.count);
  if (reduces) s += std::string(", op ") + op_name(static_cast<RedOp>(r.op));
  if (rooted) s += ", root " + std::to_string(r.root);
  if (r.window == kMappedWindow) return s + ", every rank's arrays mapped for the call)";
  if (r.window) s += ", registered input at offset " + std::to_string(r.offset);
  if (r.window_out) s += ", registered output at offset " + std::to_string(r.offset_out);
  return s + ")";
}

}  // namespace

DeviceComm::DeviceComm(int rank, int world, int device, bool emulated, size_t scratch_bytes, double timeout_s,
                       std::vector<int> names)
    : rank_(rank), world_(world), device_(device), emulated_(emulated), names_(std::move(names)) {
  if (world < 1 || world > kMaxRanks)
    throw InvalidArgument("device collectives: a group of " + std::to_string(world) + " ranks (1 to " +
                          std::to_string(kMaxRanks) + " share device memory)");
  if (rank < 0 || rank >= world) throw InvalidArgument("device collectives: rank out of range");
  if (names_.size() != static_cast<size_t>(world)) {
    names_.resize(world);
    for (int i = 0; i < world; ++i) names_[i] = i;
  }
  if (scratch_bytes == 0) scratch_bytes = env_bytes("PLEXUS_DEVICE_SCRATCH", kDefaultScratch);
  scratch_ = round_up(std::max(scratch_bytes, kMinScratch), 256);
  slot_ = std::max<size_t>(256, scratch_ / (kInboxSlots * static_cast<size_t>(world)) / 256 * 256);
  // The emulated device runs blocks one after another on a CPU: two keep the per-block logic
  // honest without paying for 32 handshakes per call.
  blocks_ = 2;
  forced_ = env_string("PLEXUS_DEVICE_ALGO");
  if (!forced_.empty() && forced_ != "oneshot" && forced_ != "twoshot")
    throw InvalidArgument("PLEXUS_DEVICE_ALGO must be oneshot or twoshot, not '" + forced_ + "'");
  direct_min_ = env_bytes("PLEXUS_DEVICE_DIRECT_MIN", kDirectMin);
  mapped_min_ = forced_.empty() ? env_bytes("PLEXUS_DEVICE_MAPPED_MIN", kMappedMin) : SIZE_MAX;  // forced: staged
  timeout_ns_ = timeout_s > 0 ? static_cast<uint64_t>(timeout_s * 1e9) : ~uint64_t{0} >> 1;
#ifdef PLEXUS_WITH_CUDA
  memory_ = emulated ? make_emulated_workspace() : make_cuda_workspace(device);
  if (!emulated) blocks_ = device_blocks(world, cuda_ipc::multiprocessors(device));
#else
  if (!emulated) throw Error("device collectives: plexus was built without CUDA");
  memory_ = make_emulated_workspace();
#endif
  own_ = static_cast<char*>(memory_->allocate(workspace_bytes()));
  const std::string grid = env_string("PLEXUS_DEVICE_BLOCKS");  // sets the grid (as NCCL_MAX_CTAS caps NCCL's)
  if (!grid.empty()) {
    char* end = nullptr;
    const long b = std::strtol(grid.c_str(), &end, 10);
    if (*end != '\0' || b < 1 || b > kMaxBlocks)
      throw InvalidArgument("PLEXUS_DEVICE_BLOCKS must be a number of blocks from 1 to " + std::to_string(kMaxBlocks) +
                            ", not '" + grid + "'");
    blocks_ = static_cast<int>(b);
  }
}

DeviceComm::~DeviceComm() {
  if (made_before_fork(generation_)) {  // a forked child: the mappings, memory and lanes are the parent's
    (void)memory_.release();
    for (auto& side : lanes_)
      for (auto& lane : side) (void)lane.release();
    return;
  }
  if (messages_pending()) abort();  // a message still waiting for its peer gives up: its lane ends
  for (auto& side : lanes_)
    for (auto& lane : side) lane.reset();
  for (int p = 0; p < static_cast<int>(peers_.size()); ++p) {
    if (p == rank_ || !peers_[p]) continue;
    try {
      memory_->close(peers_[p], workspace_bytes());
    } catch (...) {  // at exit the context may be gone
    }
  }
}

size_t DeviceComm::workspace_bytes() const {
  return kPadBytes + 2 * scratch_ + static_cast<size_t>(world_) * kInboxSlots * slot_;
}

std::string DeviceComm::handle() const { return memory_->handle(); }

void DeviceComm::connect(const std::vector<std::string>& handles, int blocks) {
  if (connected_) throw Error("device collectives: connect() twice");
  if (handles.size() != static_cast<size_t>(world_))
    throw InvalidArgument("device collectives: connect() needs one handle per rank");
  if (blocks < 1 || blocks > blocks_)
    throw InvalidArgument("device collectives: the group's grid of " + std::to_string(blocks) +
                          " blocks is not within this rank's 1 to " + std::to_string(blocks_));
  blocks_ = blocks;
  peers_.assign(world_, nullptr);
  for (int p = 0; p < world_; ++p) peers_[p] = p == rank_ ? own_ : static_cast<char*>(memory_->open(handles[p], workspace_bytes()));
  connected_ = true;
}

void DeviceComm::seal() { memory_->seal(); }

DeviceCall DeviceComm::base_call(CollKind kind, DType dtype, RedOp op, size_t count, int root, double scale) const {
  if (!connected_) throw Error("device collectives: used before connect()");
  DeviceCall c{};
  for (int p = 0; p < world_; ++p) {
    c.pads[p] = reinterpret_cast<Pad*>(peers_[p]);
    c.scratch[p] = peers_[p] + kPadBytes;
  }
  c.scratch_bytes = scratch_;
  c.box = memory_->box_for_device();
  c.dtype = static_cast<uint32_t>(dtype);
  c.op = op == RedOp::kNone ? kNoOp : static_cast<uint32_t>(op);
  c.rank = rank_;
  c.world = world_;
  c.root = root;
  c.nblocks = blocks_;
  c.scale = scale;
  c.timeout_ns = timeout_ns_;
  c.record.kind = static_cast<uint32_t>(kind);
  c.record.dtype = c.dtype;
  c.record.op = c.op;
  c.record.count = count;
  c.record.root = root;
  c.sig = signature(c.record.kind, c.record.dtype, c.record.op, count, root);
  return c;
}

void DeviceComm::launch(DeviceCall& call, void* stream) {
  launch_unchecked(call, stream);
  if (emulated_) check();
}

void DeviceComm::launch_unchecked(const DeviceCall& call, void* stream) {
  if (emulated_) {
    run_emulated_collective(call);
    return;
  }
#ifdef PLEXUS_WITH_CUDA
  cuda_ipc::DeviceGuard on(device_);
  launch_device_collective(call, stream);
#else
  (void)stream;
#endif
}

bool DeviceComm::messages_pending() {
  std::lock_guard<std::mutex> lock(lanes_mu_);
  for (auto& side : lanes_)
    for (auto& lane : side)
      if (lane && !lane->idle()) return true;
  return false;
}

std::shared_ptr<LaneWork> DeviceComm::send(const void* buf, size_t count, DType dtype, int peer, void* stream) {
  return message(kSend, buf, nullptr, count, dtype, peer, stream);
}

std::shared_ptr<LaneWork> DeviceComm::recv(void* buf, size_t count, DType dtype, int peer, void* stream) {
  return message(kRecv, nullptr, buf, count, dtype, peer, stream);
}

std::shared_ptr<LaneWork> DeviceComm::message(Program program, const void* in, void* out, size_t count, DType dtype,
                                              int peer, void* stream) {
  check();
  if (peer < 0 || peer >= world_ || peer == rank_)
    throw InvalidArgument("device collectives: rank " + std::to_string(peer) + " is not a peer of rank " +
                          std::to_string(rank_) + " in a group of " + std::to_string(world_));
  DeviceCall c = base_call(CollKind::kAllToAll, dtype, RedOp::kNone, count, -1, 1.0);
  c.program = program;
  c.record.kind = program == kSend ? kSendKind : kRecvKind;
  c.sig = signature(kSendKind, c.dtype, c.op, count, -1);  // both ends alike
  c.peer = peer;
  c.slot_bytes = slot_;
  c.nblocks = std::min(blocks_, kMessageBlocks);
  c.in = in;
  c.out = out;
  c.count = count;  // one launch goes round the chunks (of a slot each)
  auto body = [this, c](void* lane_stream) { launch_unchecked(c, lane_stream); };
  std::lock_guard<std::mutex> lock(lanes_mu_);
  std::unique_ptr<Lane>& lane = lanes_[program == kRecv][peer];
  if (!lane) {
#ifdef PLEXUS_WITH_CUDA
    lane = emulated_ ? make_emulated_lane() : make_cuda_lane(device_);
#else
    lane = make_emulated_lane();
#endif
  }
  return lane->run(stream, std::move(body));
}

Program DeviceComm::all_reduce_program(size_t bytes) const {
  if (forced_ == "oneshot") return kOneShotAllReduce;
  if (forced_ == "twoshot") return kTwoShotAllReduce;
  return bytes <= one_shot_max() ? kOneShotAllReduce : kTwoShotAllReduce;
}

size_t DeviceComm::one_shot_max() const { return world_ <= 2 ? kOneShotMax2 : kOneShotMax; }

std::string DeviceComm::explain_all_reduce(size_t bytes) const {
  if (!forced_.empty()) return forced_ + ": PLEXUS_DEVICE_ALGO";
  if (world_ > 1 && bytes >= mapped_min_)
    return "mapped: " + std::to_string(bytes) + " bytes >= " + std::to_string(mapped_min_ >> 10) +
           " KiB (PLEXUS_DEVICE_MAPPED_MIN), every rank maps the others' arrays for the call (one host round) and "
           "reduces 1/" + std::to_string(world_) + " of it into every output in place (2 times the bytes moved per "
           "rank); twoshot when a rank cannot map them or the stream is being captured";
  const std::string limit = std::to_string(one_shot_max() >> 10) + " KiB";
  if (bytes <= one_shot_max())
    return "oneshot: " + std::to_string(bytes) + " bytes <= " + limit + ", one barrier beats fewer bytes";
  return "twoshot: " + std::to_string(bytes) + " bytes > " + limit + ", each rank reduces 1/" + std::to_string(world_) +
         " of the call and copies the rest (" + std::to_string(5 * world_ - 2) + "/" + std::to_string(world_) +
         " times the bytes moved per rank against one-shot's " + std::to_string(3 + world_) + ")";
}

void DeviceComm::run_chunks(DeviceCall& c, const void* in, void* out, size_t count, size_t chunk, void* stream,
                            const std::vector<void*>* outs, const std::vector<const void*>* ins) {
  const size_t es = dtype_size(static_cast<DType>(c.dtype));
  size_t at = 0;
  do {  // count 0 still launches: a peer that passed a different count then hears of it
    c.in = static_cast<const char*>(in) + at * es;
    c.out = static_cast<char*>(out) + at * es;
    if (outs)  // one output per rank: the chunk's place in each
      for (int q = 0; q < world_; ++q) c.peer_out[q] = static_cast<char*>((*outs)[q]) + at * es;
    if (ins)
      for (int q = 0; q < world_; ++q) c.peer_in[q] = static_cast<const char*>((*ins)[q]) + at * es;
    c.count = std::min(chunk, count - at);
    launch(c, stream);
    at += c.count;
  } while (at < count);
}

uint32_t DeviceComm::add_window(const void* ptr, size_t bytes, const std::vector<uintptr_t>& peers) {
  if (peers.size() != static_cast<size_t>(world_))
    throw InvalidArgument("device collectives: a window needs one address per rank");
  const uintptr_t lo = reinterpret_cast<uintptr_t>(ptr);
  windows_.push_back(Window{next_window_, lo, lo + bytes, peers});
  return next_window_++;
}

void DeviceComm::remove_window(uint32_t id) {
  for (size_t i = 0; i < windows_.size(); ++i) {
    if (windows_[i].id == id) {
      windows_.erase(windows_.begin() + static_cast<std::ptrdiff_t>(i));
      return;
    }
  }
  throw InvalidArgument("device collectives: no registered window " + std::to_string(id));
}

const DeviceComm::Window* DeviceComm::window_of(const void* p, size_t bytes) const {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  for (const Window& w : windows_)
    if (a >= w.lo && a + bytes <= w.hi) return &w;
  return nullptr;
}

bool DeviceComm::in_windows(const void* in, const void* out, size_t bytes) const {
  return !windows_.empty() && bytes >= direct_min_ && window_of(in, bytes) && window_of(out, bytes);
}

bool DeviceComm::direct_all_reduce(const void* in, void* out, size_t count, DType dtype, RedOp op, double scale,
                                   void* stream) {
  const size_t bytes = count * dtype_size(dtype);
  if (!in_windows(in, out, bytes)) return false;
  const Window* wi = window_of(in, bytes);
  const Window* wo = window_of(out, bytes);
  const uintptr_t at_in = reinterpret_cast<uintptr_t>(in) - wi->lo, at_out = reinterpret_cast<uintptr_t>(out) - wo->lo;
  uintptr_t peer_in[kMaxRanks], peer_out[kMaxRanks];
  for (int p = 0; p < world_; ++p) {
    peer_in[p] = wi->peers[p] + at_in;
    peer_out[p] = wo->peers[p] + at_out;
  }
  CallRecord marks;
  marks.window = wi->id + 1;
  marks.window_out = wo->id + 1;
  marks.offset = at_in;
  marks.offset_out = at_out;
  launch_direct(in, out, count, dtype, op, scale, peer_in, peer_out, marks, stream);
  ++direct_calls_;
  return true;
}

void DeviceComm::all_reduce_mapped(const void* in, void* out, size_t count, DType dtype, RedOp op, double scale,
                                   const std::vector<uintptr_t>& peer_in, const std::vector<uintptr_t>& peer_out,
                                   void* stream) {
  check();
  if (peer_in.size() != static_cast<size_t>(world_) || peer_out.size() != static_cast<size_t>(world_))
    throw InvalidArgument("device collectives: a mapped all_reduce needs every rank's input and output");
  if (peer_in[rank_] != reinterpret_cast<uintptr_t>(in) || peer_out[rank_] != reinterpret_cast<uintptr_t>(out))
    throw InvalidArgument("device collectives: a mapped all_reduce lists this rank's own arrays at its own place");
  CallRecord marks;
  marks.window = marks.window_out = kMappedWindow;
  launch_direct(in, out, count, dtype, op, scale, peer_in.data(), peer_out.data(), marks, stream);
  ++mapped_calls_;
}

void DeviceComm::launch_direct(const void* in, void* out, size_t count, DType dtype, RedOp op, double scale,
                               const uintptr_t* peer_in, const uintptr_t* peer_out, const CallRecord& marks,
                               void* stream) {
  DeviceCall c = base_call(CollKind::kAllReduce, dtype, op, count, -1, scale);
  c.program = kDirectAllReduce;
  for (int p = 0; p < world_; ++p) {
    c.peer_in[p] = reinterpret_cast<const char*>(peer_in[p]);
    c.peer_out[p] = reinterpret_cast<char*>(peer_out[p]);
  }
  c.record.window = marks.window;
  c.record.window_out = marks.window_out;
  c.record.offset = marks.offset;
  c.record.offset_out = marks.offset_out;
  c.sig = signature(c.record.kind, c.record.dtype, c.record.op, count, -1, &c.record);
  c.in = in;
  c.out = out;
  c.count = count;
  launch(c, stream);
}

void DeviceComm::all_reduce(const void* in, void* out, size_t count, DType dtype, RedOp op, double scale, void* stream) {
  check();
  if (direct_all_reduce(in, out, count, dtype, op, scale, stream)) return;
  DeviceCall c = base_call(CollKind::kAllReduce, dtype, op, count, -1, scale);
  c.program = all_reduce_program(count * dtype_size(dtype));
  run_chunks(c, in, out, count, scratch_ / dtype_size(dtype), stream);
}

void DeviceComm::reduce(const void* in, void* out, size_t count, DType dtype, RedOp op, double scale, int root,
                        void* stream) {
  check();
  DeviceCall c = base_call(CollKind::kReduce, dtype, op, count, root, scale);
  c.program = kReduce;
  run_chunks(c, in, out, count, scratch_ / dtype_size(dtype), stream);
}

void DeviceComm::broadcast(const void* in, void* out, size_t count, DType dtype, int root, void* stream) {
  check();
  DeviceCall c = base_call(CollKind::kBroadcast, dtype, RedOp::kNone, count, root, 1.0);
  c.program = kBroadcast;
  run_chunks(c, in, out, count, scratch_ / dtype_size(dtype), stream);
}

void DeviceComm::all_gather(const void* in, void* out, size_t count, DType dtype, void* stream) {
  check();
  DeviceCall c = base_call(CollKind::kAllGather, dtype, RedOp::kNone, count, -1, 1.0);
  c.program = kAllGather;
  c.stride = count;
  run_chunks(c, in, out, count, scratch_ / dtype_size(dtype), stream);
}

void DeviceComm::all_gather_list(const void* in, const std::vector<void*>& outs, size_t count, DType dtype,
                                 void* stream) {
  check();
  if (outs.size() != static_cast<size_t>(world_))
    throw InvalidArgument("device collectives: all_gather needs one output per rank");
  DeviceCall c = base_call(CollKind::kAllGather, dtype, RedOp::kNone, count, -1, 1.0);
  c.program = kAllGather;
  c.listed = 1;
  run_chunks(c, in, outs[0], count, scratch_ / dtype_size(dtype), stream, &outs);  // out: unused when listed
}

void DeviceComm::reduce_scatter(const void* in, void* out, size_t count, DType dtype, RedOp op, double scale,
                                void* stream) {
  check();
  DeviceCall c = base_call(CollKind::kReduceScatter, dtype, op, count, -1, scale);
  c.program = kReduceScatter;
  c.stride = count;
  // Every rank's block of the chunk is staged: world * chunk elements fit one scratch set.
  run_chunks(c, in, out, count, per_rank_chunk(dtype), stream);
}

void DeviceComm::gather(const void* in, const std::vector<void*>& outs, size_t count, DType dtype, int root,
                        void* stream) {
  const bool at_root = check_rooted_list("gather", "output", outs.size(), root);
  // Elsewhere nothing is written: the input stands in for the outputs the program never uses.
  const std::vector<void*> unused(world_, const_cast<void*>(in));
  DeviceCall c = base_call(CollKind::kGather, dtype, RedOp::kNone, count, root, 1.0);
  c.program = kGather;
  run_chunks(c, in, const_cast<void*>(in), count, scratch_ / dtype_size(dtype), stream, at_root ? &outs : &unused);
}

void DeviceComm::scatter(const std::vector<const void*>& ins, void* out, size_t count, DType dtype, int root,
                         void* stream) {
  const bool at_root = check_rooted_list("scatter", "input", ins.size(), root);
  const std::vector<const void*> unused(world_, out);  // never read away from the root
  DeviceCall c = base_call(CollKind::kScatter, dtype, RedOp::kNone, count, root, 1.0);
  c.program = kScatter;
  // The root stages every rank's block of the chunk.
  run_chunks(c, out, out, count, per_rank_chunk(dtype), stream, nullptr, at_root ? &ins : &unused);
}

void DeviceComm::all_to_all(const std::vector<const void*>& ins, const std::vector<uint64_t>& sends,
                            const std::vector<void*>& outs, const std::vector<uint64_t>& receives, DType dtype,
                            void* stream) {
  check();
  const size_t w = static_cast<size_t>(world_);
  if (ins.size() != w || sends.size() != w || outs.size() != w || receives.size() != w)
    throw InvalidArgument("device collectives: all_to_all needs one input, output and count per rank");
  // The blocks' sizes differ between ranks: the kernel checks them pair by pair, so the
  // signature leaves them out (the record's count, for messages, is what this rank sends).
  DeviceCall c = base_call(CollKind::kAllToAll, dtype, RedOp::kNone, 0, -1, 1.0);
  c.program = kAllToAll;
  c.stride = per_rank_chunk(dtype);  // every rank's chunk of a round has its place in a scratch set
  for (size_t j = 0; j < w; ++j) {
    c.peer_in[j] = static_cast<const char*>(ins[j]);
    c.sends[j] = sends[j];
    c.peer_out[j] = static_cast<char*>(outs[j]);
    c.receives[j] = receives[j];
    c.record.count += sends[j];
  }
  launch(c, stream);
}

size_t DeviceComm::per_rank_chunk(DType dtype) const {
  const size_t es = dtype_size(dtype), grain = std::max<size_t>(1, 16 / es);
  return std::max(grain, scratch_ / (static_cast<size_t>(world_) * es) / grain * grain);
}

bool DeviceComm::check_rooted_list(const char* kind, const char* what, size_t listed, int root) {
  check();
  if (root < 0 || root >= world_)
    throw InvalidArgument("device collectives: root " + std::to_string(root) + " is out of range for a group of " +
                          std::to_string(world_) + " ranks");
  const bool at_root = rank_ == root;
  if (listed != (at_root ? static_cast<size_t>(world_) : 0u))
    throw InvalidArgument(std::string("device collectives: ") + kind + " needs one " + what +
                          " per rank at its root, none elsewhere");
  return at_root;
}

void DeviceComm::check() {
  if (made_before_fork(generation_))
    throw Error("plexus rank " + std::to_string(names_[rank_]) + ": this group's device collectives were set up before "
                "a fork and this is the forked child (pid " + std::to_string(getpid()) + "): a child cannot use its "
                "parent's device workspaces; make a new process group in the child");
  if (!failure_.empty()) {
    if (failure_kind_ == kTimeout) throw Timeout(failure_);
    if (failure_kind_ == kPeerFailed) throw PeerError(failure_peer_, failure_);
    throw Error(failure_);
  }
  ErrorBox* box = memory_->box();
  const uint32_t code = __atomic_load_n(&box->code, __ATOMIC_ACQUIRE);
  if (code == kOk) return;
  const int me = names_[rank_];
  const int peer = box->peer < static_cast<uint32_t>(world_) ? static_cast<int>(box->peer) : -1;
  const std::string them = peer >= 0 ? "rank " + std::to_string(names_[peer]) : "a peer";
  auto name = [this](uint32_t r) { return std::to_string(r < static_cast<uint32_t>(world_) ? names_[r] : -1); };
  const std::string call = describe(box->mine);
  const bool message = box->mine.kind == kSendKind || box->mine.kind == kRecvKind;
  const std::string where =
      message ? " (block " + std::to_string(box->block) + ", chunk #" + std::to_string(box->seq) + " between the two)"
              : " (block " + std::to_string(box->block) + ", barrier " + std::to_string(box->phase) + ", call #" +
                    std::to_string(box->seq) + " of that block)";
  switch (code) {
    case kTimeout:
      failure_ = call + ": rank " + std::to_string(me) + " waited on the GPU for " + them + " past the timeout of " +
                 std::to_string(static_cast<double>(timeout_ns_) / 1e9) + " s" + where +
                 ": that rank never made this call, died, or its GPU work is stuck";
      break;
    case kMismatch:
      failure_ = std::string(message ? "mismatched device messages" : "mismatched device collectives") + ": rank " +
                 std::to_string(me) + " called " + call + " but " + them + " called " +
                 (box->theirs.seq == box->seq ? describe(box->theirs) : std::string("a different collective")) + where;
      break;
    case kAborted:
      failure_ = call + ": the communicator was aborted while rank " + std::to_string(me) + " waited on the GPU for " +
                 them + where;
      break;
    case kSizeMismatch:
      failure_ = "mismatched device collectives: rank " + std::to_string(me) + " called " + call + ", in which rank " +
                 name(box->sizes.from) + " sends " + std::to_string(box->sizes.sent) + " elements to rank " +
                 name(box->sizes.to) + ", which expects " + std::to_string(box->sizes.expected) + " from it";
      break;
    case kPeerFailed:
      failure_ = call + ": " + them + " failed a device collective (its own error says why), so rank " +
                 std::to_string(me) + "'s call stopped" + where;
      break;
    default:
      failure_ = call + ": the device reported error code " + std::to_string(code);
  }
  failure_kind_ = static_cast<int>(code);
  failure_peer_ = peer >= 0 ? names_[peer] : -1;
  check();
}

void DeviceComm::abort() {
  if (made_before_fork(generation_)) return;
  __atomic_store_n(&memory_->box()->abort, 1u, __ATOMIC_RELEASE);
}

}  // namespace plexus
