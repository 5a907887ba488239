// Point-to-point messages (send/recv with tags) between the ranks of a communicator.
//
// Unlike collectives, point-to-point ops are not run one after another: a rank may post a
// receive and then a send (torch's batch_isend_irecv does), so both must progress together.
// The engine has its own thread and its own connections (the point-to-point channel of the
// communicator's transports), and matches messages to receives in order per (peer, tag);
// messages that arrive before their receive is posted are kept until it is.
#pragma once

#include <atomic>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/deadline.h"
#include "base/error.h"
#include "base/types.h"
#include "core/work.h"
#include "transport/connection.h"
#include "transport/frame.h"

namespace plexus {

// What a receive fails with when it met a send of another size or dtype: both calls, named.
std::exception_ptr recv_mismatch(size_t bytes, DType dtype, int tag, const std::string& sender, size_t sent_bytes,
                                 DType sent_dtype);

class Communicator;
class TransportSet;

constexpr int kAnySource = -1;

class P2PEngine {
 public:
  // Starts the engine's thread; `transports` are the communicator's, started.
  P2PEngine(Communicator& comm, TransportSet& transports);
  ~P2PEngine();

  // Completes once the message is handed to the transport (not necessarily received).
  std::shared_ptr<Work> send(int peer, const void* buf, size_t bytes, DType dtype, int tag);
  // `peer` may be kAnySource; Work::source() then tells who sent it.
  std::shared_ptr<Work> recv(int peer, void* buf, size_t bytes, DType dtype, int tag);
  // Fails everything pending and stops the engine.
  void abort(const std::string& why);

 private:
  // Queues a send or receive for the engine's thread; its Work completes there.
  std::shared_ptr<Work> post(bool is_send, int peer, char* buf, size_t bytes, DType dtype, int tag);

  struct Request {
    std::shared_ptr<Work> work;
    bool is_send;
    int peer;
    char* buf;
    size_t bytes;
    DType dtype;
    int tag;
    Deadline deadline;
  };
  struct Unexpected {
    int peer;
    int tag;
    DType dtype;
    std::vector<char> data;
  };
  struct Peer {
    std::unique_ptr<Connection> conn;
    std::deque<std::shared_ptr<Request>> sends;
    FrameHeader out{};
    size_t out_done = 0;
    FrameHeader in{};
    size_t in_got = 0;                  // header bytes read
    std::shared_ptr<Request> in_target;  // matched receive of the frame being read
    std::unique_ptr<Unexpected> in_spill;  // or where an unmatched frame goes
    size_t in_payload_got = 0;
    uint64_t sent = 0;  // messages sent to this peer (frame sequence numbers)
    // Set once the peer left, died or reported an error: what requests to it fail with.
    std::exception_ptr closed_why;
  };

  void loop();
  void take_new_requests();
  bool match_unexpected(const std::shared_ptr<Request>& r);
  void ensure_connections();
  bool pump_send(int p);
  bool pump_recv(int p);
  bool wants_reading(int p) const;
  void start_frame(int p);
  void finish_frame(int p);
  void accept_pending();
  void check_deadlines();
  void fail_all(std::exception_ptr error);
  // The connection to `p` ended (it left, died or reported an error): fail only what needs it.
  void peer_closed(int p, const PeerError& why);

  Communicator& comm_;
  TransportSet& transports_;
  std::vector<Peer> peers_;
  std::list<std::shared_ptr<Request>> posted_;  // receives in posting order
  std::list<Unexpected> unexpected_;            // messages that came before their receive

  std::mutex mu_;
  std::deque<std::shared_ptr<Request>> inbox_;
  bool stopping_ = false;
  std::string failure_;
  int wake_fd_ = -1;
  std::thread thread_;
};

}  // namespace plexus
