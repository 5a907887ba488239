// A group of ranks that run collectives together. Ops are queued in call order and executed one
// at a time by the communicator's progress thread; callers get a Work to wait on.
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "algorithms/cost.h"
#include "base/deadline.h"
#include "base/fork.h"
#include "base/signature.h"
#include "bootstrap/rendezvous.h"
#include "bootstrap/store.h"
#include "core/flight_recorder.h"
#include "core/op_context.h"
#include "core/direct_messages.h"
#include "core/p2p.h"
#include "core/work.h"
#include "transport/connection.h"
#include "transport/transport_set.h"

namespace plexus {

class Communicator {
 public:
  // Collective over `size` processes that share `store` (usually a PrefixStore of the group).
  // Blocks until every rank has joined or `timeout_s` passes.
  // `global_ranks[r]`: the rank that messages use for group rank r (empty: r itself).
  Communicator(std::shared_ptr<Store> store, int rank, int size, double timeout_s,
               std::vector<int> global_ranks = {});
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return id_.rank; }
  int size() const { return id_.size; }
  uint64_t id() const { return id_.comm_id; }
  double timeout_s() const { return timeout_s_; }
  // How messages call group rank r: "rank G" with G its global rank.
  std::string name_of(int r) const;
  // The port peers dial for collectives (0 when no transport listens).
  int listen_port() const { return transports_->port(kCollectiveChannel); }
  // The ports peers dial, one per channel (collectives, point-to-point); 0 where none.
  std::vector<int> listen_ports() const {
    std::vector<int> ports;
    for (int ch = 0; ch < kChannels; ++ch) ports.push_back(transports_->port(ch));
    return ports;
  }
  const std::vector<Endpoint>& endpoints() const { return endpoints_; }
  // Memory shared with the ranks on this host, or nullptr when no transport maps any (alone on
  // the host, or shared memory not allowed by PLEXUS_TRANSPORTS or not usable).
  HostMemory* host_memory() const { return transports_->host_memory(); }
  // Name of the transport used to reach `peer` (transport/registry.cc).
  const char* transport_to(int peer) const;
  // Hosts, ranks per host and shared memory: what the tuner decides by (the same on all ranks).
  const GroupShape& shape() const { return shape_; }
  const CostModel& cost_model() const { return model_; }
  // Sets the cost model (all ranks must pass the same values; the Python layer gathers them).
  void set_cost_model(const CostModel& m) {
    model_ = m;
    if (cross_) cross_->set_cost_model(m);
  }
  // The ranks with this rank's position on their host, one per host (for hierarchical
  // algorithms), or nullptr when the group is not several hosts with equal numbers of ranks.
  Communicator* cross_hosts() const { return cross_.get(); }
  // Part of another communicator's algorithm (cross_hosts): PLEXUS_ALGO does not apply to it.
  bool internal() const { return internal_; }

  // Point-to-point messages (their own engine: they do not queue behind collectives).
  P2PEngine& p2p() { return *p2p_; }
  // Device messages between hosts, through the transports' message ports.
  DirectMessages& direct() { return *direct_; }

  // Runs an op after every op submitted before it. A blocking call finding nothing queued or
  // running executes on the calling thread (no hand-off to the progress thread: lower latency);
  // everything else is queued for the progress thread. Returns the op's Work. `algorithm`
  // names what runs it, for the flight recorder.
  std::shared_ptr<Work> submit(const Signature& sig, std::function<void(OpContext&)> body, const char* algorithm,
                               bool blocking);
  // Fails the op in flight and everything queued, and makes the communicator unusable.
  void abort(const std::string& why);

  // --- for the progress engine (progress thread only) ---
  // The connection to `peer`, connecting first if needed, or waiting for the peer to.
  Connection& connection(int peer, Deadline deadline);
  // Readable for good once abort() was called (no waiter drains it, so every waiter sees it).
  int abort_fd() const { return abort_fd_; }
  // Throws in a forked child: the group's connections, threads and shared memory are the parent's.
  void check_not_forked() const;
  // Readable when a peer dials in for collectives, or goes on with its handshake
  // (accept_pending takes the streams that are ready).
  std::vector<int> dial_fds() const { return transports_->dial_fds(kCollectiveChannel); }
  void accept_pending();
  // Throws if abort() was called.
  void check_abort();

 private:
  struct Op {
    Signature sig;
    uint64_t seq = 0;
    std::function<void(OpContext&)> body;
    std::shared_ptr<Work> work;
    bool recorded_running = false;  // the flight recorder has it running already
  };
  // Computes shape_ (agreeing on shared memory across hosts) and creates cross_ if useful.
  void setup_shape(Store& store, Deadline deadline);
  // Polls the abort descriptor and the dialers (and the progress thread's wake-ups, which it
  // drains: only it may) for up to `timeout_ms`; returns whether a peer is dialing in.
  bool wait_for_dial(int timeout_ms, bool progress_thread);
  void drain_wake();
  void progress_loop();
  void run_op(Op& op);
  void idle_wait();
  // After a failure: tells every connected peer why (best effort) and closes the streams.
  void fail_connections(const std::string& why);
  void wake();

  CommIdentity id_;
  double timeout_s_;
  std::vector<int> global_ranks_;
  std::shared_ptr<Store> store_;
  std::unique_ptr<TransportSet> transports_;  // outlives the connections it made
  std::vector<Endpoint> endpoints_;
  std::unique_ptr<P2PEngine> p2p_;
  std::unique_ptr<DirectMessages> direct_;
  std::unique_ptr<FlightRecorder> recorder_;  // the last calls, for dumps
  GroupShape shape_;
  CostModel model_;
  std::unique_ptr<Communicator> cross_;
  bool internal_ = false;
  std::vector<std::unique_ptr<Connection>> conns_;  // by peer rank; progress thread only

  std::mutex mu_;        // guards the queue and the counters below
  std::mutex exec_mu_;   // held by whoever runs ops or touches connections
  std::deque<Op> queue_;
  size_t in_flight_ = 0;  // submitted ops not finished yet
  bool stopping_ = false;
  std::string abort_reason_;
  std::atomic<bool> aborted_{false};
  uint64_t next_seq_ = 1;
  int wake_fd_ = -1;   // new ops for the progress thread (it drains it)
  int abort_fd_ = -1;  // written once by abort(), never drained

  std::string failure_;  // set once an op failed; progress thread only
  std::thread thread_;
  int generation_ = fork_generation();  // of the process that made it
};

}  // namespace plexus
