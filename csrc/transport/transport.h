// The transport interface and the table of transports. A transport carries ordered byte
// streams (Connections) between the ranks of a communicator; the communicator uses, for each
// peer, the first transport of the table that PLEXUS_TRANSPORTS allows and that can connect
// the pair (transport/transport_set.h). Nothing outside this layer names a transport.
//
// Setup has two phases around the endpoint exchange of the rendezvous: a transport opens (a
// TCP transport listens) and gives its address, which goes into this rank's endpoint record;
// once every rank's record is known, it starts (shared memory maps the other ranks' segments).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/deadline.h"
#include "bootstrap/identity.h"
#include "bootstrap/store.h"
#include "transport/connection.h"

namespace plexus {

class HostMemory;   // transport/host_memory.h
class MessagePort;  // transport/message_port.h

// Each peer pair has one stream per channel, so that point-to-point messages never queue
// behind collectives.
constexpr int kCollectiveChannel = 0;
constexpr int kP2PChannel = 1;
constexpr int kChannels = 2;

// What a transport is opened and started with.
struct TransportSetup {
  Store& store;  // the communicator's rendezvous store, during setup only
  CommIdentity id;
  std::vector<std::string> names;  // by rank: how messages call it ("rank 5")
  Deadline deadline;               // of the communicator's setup
};

// What start() learns about a rank from its endpoint record.
struct PeerEndpoint {
  std::string host_id;   // equal for ranks on the same host
  bool uses = false;     // the rank opened this transport too
  std::string address;   // the address it gave, when it did
};

class Transport {
 public:
  virtual ~Transport() = default;

  // Phase 1 (the transport is open): what peers need to reach this rank, for its endpoint
  // record. No '|' in it.
  virtual std::string address() const = 0;
  // Phase 2: every rank's endpoint (by rank) is known. May use the store together with the
  // other ranks that use the transport.
  virtual void start(const TransportSetup& setup, const std::vector<PeerEndpoint>& peers) = 0;

  // Whether this transport connects this rank and `peer`: both ranks of the pair agree.
  virtual bool can_connect(int peer) const = 0;
  // Why it cannot, in words that follow "PLEXUS_TRANSPORTS=..., but ".
  virtual std::string why_not(int peer) const = 0;

  // A stream to `peer` on `channel`, or nullptr when the peer dials this rank instead: the
  // stream then comes from accept_one(channel) once one of dial_fds(channel) is readable.
  virtual std::unique_ptr<Connection> connect(int peer, int channel, Deadline deadline) = 0;
  // Appends the descriptors that become readable when a peer dials in on `channel`, or sends
  // more of the handshake of a stream it dialed (nothing when nobody dials).
  virtual void dial_fds(int channel, std::vector<int>& out) const {}
  // Takes one stream dialed in on `channel` whose handshake is complete; nullptr when none is
  // (refused ones are closed and logged). Never blocks: a stranger that connects and sends
  // nothing, or too little, must not hold up the caller (who may be running a collective).
  virtual std::unique_ptr<Connection> accept_one(int channel) { return nullptr; }
  // The port peers dial on `channel` (0: none), and where `peer` listens, for messages.
  virtual int port(int channel) const { return 0; }
  virtual std::string peer_address(int peer, int channel) const { return ""; }

  // Whether it joins hosts through a low-latency fabric (InfiniBand / RoCE through UCX): the cost
  // model's `ucx` link rather than `network`.
  virtual bool fabric() const { return false; }
  // The memory shared with the ranks of this host, when the transport maps it.
  virtual HostMemory* host_memory() { return nullptr; }
  // Whole messages straight between the ranks' memory, device memory included, when the
  // transport can move them (transport/message_port.h).
  virtual MessagePort* message_port() { return nullptr; }
  // This rank failed: peers that wait on it without a stream (in host memory) learn why.
  virtual void announce_failure(const std::string& why) {}
};

// One row of the table: a transport's name (in PLEXUS_TRANSPORTS, the endpoint records and
// Communicator::transport_to), what it is for, and how to open it for a communicator.
struct TransportInfo {
  const char* name;
  const char* summary;
  std::unique_ptr<Transport> (*open)(const TransportSetup& setup);
};

// Every transport, in order of preference (transport/registry.cc).
const std::vector<TransportInfo>& transport_table();

}  // namespace plexus
