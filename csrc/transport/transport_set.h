// The transports of one communicator, shared by its collectives and its point-to-point engine:
// those PLEXUS_TRANSPORTS allows (every transport of the table by default), and for each peer
// the first of them, in the table's order, that can connect the pair.
//
// After start(), the communicator's thread and the point-to-point thread use it at once: it
// changes no more, and each channel's streams are dialed and accepted by that channel's owner.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bootstrap/rendezvous.h"
#include "transport/transport.h"

namespace plexus {

class TransportSet {
 public:
  // Opens the allowed transports.
  explicit TransportSet(const TransportSetup& setup);

  // By transport name: what goes into this rank's endpoint record.
  std::map<std::string, std::string> addresses() const;
  // Starts every transport once all endpoints are known, and chooses one per peer. Throws
  // InvalidArgument for a bad PLEXUS_TRANSPORTS, and when no allowed transport reaches some
  // peer: InvalidArgument when it is on another host (the setting cannot work), Error when it
  // is on this one (it did not).
  void start(const TransportSetup& setup, const std::vector<Endpoint>& endpoints);

  // The transport that reaches `rank`, and its name ("" for this rank when none would).
  Transport& to(int rank) const { return *opened_[choice_[rank]].transport; }
  const char* name_to(int rank) const;
  // The message port that reaches `rank` (its transport's), or nullptr.
  MessagePort* port_to(int rank) const { return choice_[rank] >= 0 ? to(rank).message_port() : nullptr; }
  // Whether `rank` is reached through a fabric (Transport::fabric).
  bool fabric_to(int rank) const { return choice_[rank] >= 0 && to(rank).fabric(); }
  // Whether every rank opened one same fabric transport: the same answer on every rank (from the
  // endpoint records), and false means some pairs across hosts are surely off any fabric.
  bool fabric_possible() const { return fabric_possible_; }

  // Descriptors that are readable when peers dial in on `channel` (or go on with a handshake).
  std::vector<int> dial_fds(int channel) const;
  // One stream dialed in on `channel` by any transport, or nullptr.
  std::unique_ptr<Connection> accept_one(int channel);
  // The first port peers dial on `channel` (0: none).
  int port(int channel) const;
  // The memory shared with this host's ranks, or nullptr when no transport maps it.
  HostMemory* host_memory() const;
  // This rank failed: every transport tells the peers that wait on it its own way.
  void announce_failure(const std::string& why);

 private:
  struct Opened {
    const TransportInfo* info;
    std::unique_ptr<Transport> transport;
  };
  std::string setting_;         // PLEXUS_TRANSPORTS as given, for messages
  std::string setting_error_;   // what is wrong with it, if anything
  std::vector<Opened> opened_;  // in the table's order
  std::vector<int> choice_;     // by rank: index into opened_, -1 for none (this rank only)
  bool fabric_possible_ = false;
};

}  // namespace plexus
