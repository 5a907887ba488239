// The progress engine of one op: algorithms post framed sends and receives per peer, with
// dependencies, and run() drives all of them at once over non-blocking connections.
//
// Per peer, sends leave and receives land in the order they were posted (each connection is an
// ordered stream). A send may wait for a receive (e.g. forward a chunk once it has arrived and
// been reduced); a receive's callback runs on arrival, before the next receive from that peer.
// Every frame carries the op's signature and sequence number; a frame from a peer that is in a
// different call fails the op with both calls named.
#pragma once

#include <cstddef>
#include <exception>
#include <functional>
#include <vector>

#include "core/op_context.h"
#include "transport/connection.h"
#include "transport/frame.h"

namespace plexus {

class Exchange {
 public:
  explicit Exchange(OpContext& ctx);

  // Receives exactly `bytes` from `peer` into `dst`; returns an id that sends can wait on. With
  // `after` (another receive's id), it is not read before that one has arrived: callbacks that
  // must run in order across peers (e.g. reduce, then scale) stay in order.
  int recv(int peer, void* dst, size_t bytes, std::function<void()> on_arrival = nullptr,
           int after = -1);
  // Sends `bytes` from `src` to `peer` once receive `after` (-1: none) has arrived.
  void send(int peer, const void* src, size_t bytes, int after = -1);
  // The same, once every receive in `after` (-1 entries are ignored) has arrived.
  void send_after(int peer, const void* src, size_t bytes, std::vector<int> after);
  // Drives everything posted to completion; throws on a failure, an abort or the deadline.
  void run();

 private:
  struct SendItem {
    const void* src;
    size_t bytes;
    int after;                     // one receive to wait for (the common case), or -1
    std::vector<int> after_more;   // further ones
    bool ready(const std::vector<char>& arrived) const {
      if (after >= 0 && !arrived[after]) return false;
      for (int a : after_more)
        if (a >= 0 && !arrived[a]) return false;
      return true;
    }
  };
  struct RecvItem {
    void* dst;
    size_t bytes;
    std::function<void()> on_arrival;
    int after;
  };
  struct Stream {
    int peer = -1;
    Connection* conn = nullptr;
    std::vector<int> sends, recvs;  // item ids, in posting order
    size_t next_send = 0, next_recv = 0;
    FrameHeader out_header{};
    size_t out_done = 0;  // bytes of the current outgoing frame (header + payload) written
    FrameHeader in_header{};
    size_t in_header_got = 0, in_payload_got = 0;
    bool done() const { return next_send == sends.size() && next_recv == recvs.size(); }
  };

  Stream& stream(int peer);
  bool pump_sends(Stream& s, bool* want_write);
  bool pump_recvs(Stream& s, bool* want_read);
  void check_header(Stream& s, const RecvItem& item);
  [[noreturn]] void throw_peer_error_frame(Stream& s);
  // After a lost connection, looks briefly for a peer's error frame that explains it (the root
  // cause), and throws that; else rethrows `original`.
  [[noreturn]] void rethrow_with_cause(std::exception_ptr original);
  void drive();
  [[noreturn]] void throw_timeout();

  OpContext& ctx_;
  Communicator& comm_;  // whose connections carry the op
  std::vector<SendItem> sends_;
  std::vector<RecvItem> recvs_;
  std::vector<char> arrived_;
  std::vector<Stream> streams_;
};

}  // namespace plexus
