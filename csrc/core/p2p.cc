// The point-to-point engine: requests, connections on demand, framing and matching.
#include "core/p2p.h"

#include <algorithm>

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>

#include "base/backoff.h"
#include "base/copy.h"
#include "base/error.h"
#include "base/fault.h"
#include "base/log.h"
#include "core/communicator.h"
#include "transport/transport_set.h"

namespace plexus {

std::exception_ptr recv_mismatch(size_t bytes, DType dtype, int tag, const std::string& sender, size_t sent_bytes,
                                 DType sent_dtype) {
  return std::make_exception_ptr(InvalidArgument("recv of " + std::to_string(bytes) + " bytes of " +
                                                 dtype_name(dtype) + " with tag " + std::to_string(tag) + ": " +
                                                 sender + " sent " + std::to_string(sent_bytes) + " bytes of " +
                                                 dtype_name(sent_dtype)));
}

namespace {
constexpr size_t kHeader = sizeof(FrameHeader);
constexpr size_t kSpillStep = 1 << 20;  // an unexpected message's buffer grows by this much at most
}

P2PEngine::P2PEngine(Communicator& comm, TransportSet& transports)
    : comm_(comm), transports_(transports), peers_(static_cast<size_t>(comm.size())) {
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw Error("eventfd failed: " + errno_text(errno));
  thread_ = std::thread([this] { loop(); });
}

P2PEngine::~P2PEngine() {
  abort("the communicator was destroyed");
  if (thread_.joinable()) thread_.join();
  for (auto& p : peers_)
    if (p.conn) p.conn->shutdown();
  close(wake_fd_);
}

std::shared_ptr<Work> P2PEngine::send(int peer, const void* buf, size_t bytes, DType dtype, int tag) {
  return post(true, peer, static_cast<char*>(const_cast<void*>(buf)), bytes, dtype, tag);
}

std::shared_ptr<Work> P2PEngine::recv(int peer, void* buf, size_t bytes, DType dtype, int tag) {
  return post(false, peer, static_cast<char*>(buf), bytes, dtype, tag);
}

std::shared_ptr<Work> P2PEngine::post(bool is_send, int peer, char* buf, size_t bytes, DType dtype, int tag) {
  comm_.check_not_forked();
  Signature sig;
  sig.kind = CollKind::kCount;
  auto r = std::make_shared<Request>(Request{std::make_shared<Work>(sig), is_send, peer, buf, bytes, dtype, tag,
                                             Deadline::after_seconds(comm_.timeout_s())});
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failure_.empty()) throw Error("point-to-point is unusable after an earlier failure: " + failure_);
    inbox_.push_back(r);
  }
  uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof(one));
  return r->work;
}

void P2PEngine::abort(const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    if (failure_.empty()) failure_ = why;
  }
  uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof(one));
}

void P2PEngine::take_new_requests() {
  std::deque<std::shared_ptr<Request>> fresh;
  {
    std::lock_guard<std::mutex> lock(mu_);
    fresh.swap(inbox_);
  }
  for (auto& r : fresh) {
    const bool gone = r->peer != kAnySource && peers_[r->peer].closed_why != nullptr;
    if (!r->is_send && match_unexpected(r)) continue;  // it came before its sender left
    if (gone) {
      r->work->set_failed(peers_[r->peer].closed_why);  // it left: nothing more goes or comes
    } else if (r->is_send) {
      peers_[r->peer].sends.push_back(r);
    } else {
      posted_.push_back(r);
    }
  }
}

// A receive posted after its message arrived takes the earliest matching one.
bool P2PEngine::match_unexpected(const std::shared_ptr<Request>& r) {
  for (auto it = unexpected_.begin(); it != unexpected_.end(); ++it) {
    if (it->tag != r->tag || (r->peer != kAnySource && r->peer != it->peer)) continue;
    if (it->data.size() != r->bytes || it->dtype != r->dtype) {
      r->work->set_failed(recv_mismatch(r->bytes, r->dtype, r->tag, comm_.name_of(it->peer), it->data.size(), it->dtype));
    } else {
      copy_bytes(r->buf, it->data.data(), r->bytes);
      r->work->set_source(it->peer);
      r->work->set_done();
    }
    unexpected_.erase(it);
    return true;
  }
  return false;
}

bool P2PEngine::wants_reading(int p) const {
  if (peers_[p].in_got > 0) return true;  // in the middle of a frame
  for (const auto& r : posted_)
    if (r->peer == p || r->peer == kAnySource) return true;
  return false;
}

void P2PEngine::ensure_connections() {
  bool any_source = false;
  for (const auto& r : posted_) any_source |= r->peer == kAnySource;
  for (int p = 0; p < static_cast<int>(peers_.size()); ++p) {
    Peer& peer = peers_[p];
    if (peer.conn || peer.closed_why || p == comm_.rank()) continue;
    // Connect when a message needs the peer. A receive from any source connects to every rank,
    // since any of them may send. Where the peer must dial (TCP: the lower rank dials), connect
    // gives nothing and the stream comes through accept_pending.
    bool needed = !peer.sends.empty() || any_source;
    for (const auto& r : posted_) needed |= r->peer == p;
    if (!needed) continue;
    peer.conn = transports_.to(p).connect(p, kP2PChannel, Deadline::after_seconds(comm_.timeout_s()));
  }
}

void P2PEngine::accept_pending() {
  while (auto conn = transports_.accept_one(kP2PChannel)) {
    int p = conn->peer();
    if (peers_[p].conn) continue;
    peers_[p].conn = std::move(conn);
  }
}

bool P2PEngine::pump_send(int p) {
  Peer& peer = peers_[p];
  bool moved = false;
  while (!peer.sends.empty() && peer.conn) {
    Request& r = *peer.sends.front();
    if (peer.out_done == 0) {
      Signature sig;
      sig.kind = CollKind::kCount;
      sig.dtype = r.dtype;
      sig.root = r.tag;
      sig.count = r.bytes / dtype_size(r.dtype);
      peer.out = FrameHeader::data(comm_.id(), ++peer.sent, sig, r.bytes);
      peer.out.type = static_cast<uint8_t>(FrameType::kP2P);
    }
    iovec iov[2];
    int n = 0;
    if (peer.out_done < kHeader) {
      iov[n++] = {reinterpret_cast<char*>(&peer.out) + peer.out_done, kHeader - peer.out_done};
      if (r.bytes) iov[n++] = {r.buf, r.bytes};
    } else {
      iov[n++] = {r.buf + (peer.out_done - kHeader), r.bytes - (peer.out_done - kHeader)};
    }
    size_t k = peer.conn->write_some(iov, n);
    if (k == 0) break;
    moved = true;
    peer.out_done += k;
    fault_point("p2p_send");
    if (peer.out_done == kHeader + r.bytes) {
      peer.out_done = 0;
      r.work->set_done();
      peer.sends.pop_front();
    }
  }
  return moved;
}

void P2PEngine::start_frame(int p) {
  Peer& peer = peers_[p];
  const FrameHeader& h = peer.in;
  if (h.magic != kFrameMagic || h.version != kWireVersion || h.comm_id != comm_.id())
    throw PeerError(p, comm_.name_of(p) + " sent bytes that are not a plexus point-to-point frame");
  if (h.type == static_cast<uint8_t>(FrameType::kError))
    throw PeerReportedError(p, comm_.name_of(p) + " reported an error");
  if (h.type != static_cast<uint8_t>(FrameType::kP2P))
    throw PeerError(p, comm_.name_of(p) + " sent a frame of the wrong kind on the point-to-point channel");
  const int tag = h.root;
  for (auto it = posted_.begin(); it != posted_.end(); ++it) {
    Request& r = **it;
    if (r.tag != tag || (r.peer != kAnySource && r.peer != p)) continue;
    if (r.bytes != h.payload_bytes || r.dtype != static_cast<DType>(h.dtype)) {
      // The pair disagrees; fail this receive and keep the message aside.
      r.work->set_failed(
          recv_mismatch(r.bytes, r.dtype, tag, comm_.name_of(p), h.payload_bytes, static_cast<DType>(h.dtype)));
      posted_.erase(it);
      break;
    }
    peer.in_target = *it;
    posted_.erase(it);
    return;
  }
  // Nobody asked for it yet: keep it aside, its buffer growing as its bytes come (a length field
  // alone allocates nothing).
  peer.in_spill = std::make_unique<Unexpected>(Unexpected{p, tag, static_cast<DType>(h.dtype), {}});
}

void P2PEngine::finish_frame(int p) {
  Peer& peer = peers_[p];
  if (peer.in_target) {
    peer.in_target->work->set_source(p);
    peer.in_target->work->set_done();
  } else {
    unexpected_.push_back(std::move(*peer.in_spill));
  }
  peer.in_target.reset();
  peer.in_spill.reset();
  peer.in_got = peer.in_payload_got = 0;
}

bool P2PEngine::pump_recv(int p) {
  Peer& peer = peers_[p];
  bool moved = false;
  while (peer.conn && wants_reading(p)) {
    if (peer.in_got < kHeader) {
      size_t k = peer.conn->read_some(reinterpret_cast<char*>(&peer.in) + peer.in_got, kHeader - peer.in_got);
      if (k == 0) break;
      moved = true;
      peer.in_got += k;
      if (peer.in_got < kHeader) continue;
      start_frame(p);
    }
    size_t total = peer.in.payload_bytes;
    size_t room = total - peer.in_payload_got;  // what this read may take
    char* dst = nullptr;
    if (peer.in_target) {
      dst = peer.in_target->buf;
    } else {
      std::vector<char>& spill = peer.in_spill->data;
      room = std::min(room, kSpillStep);
      if (spill.size() < peer.in_payload_got + room) spill.resize(peer.in_payload_got + room);
      dst = spill.data();
    }
    if (peer.in_payload_got < total) {
      size_t k = peer.conn->read_some(dst + peer.in_payload_got, room);
      if (k == 0) break;
      moved = true;
      peer.in_payload_got += k;
      if (peer.in_payload_got < total) continue;
    }
    finish_frame(p);
    moved = true;
  }
  return moved;
}

void P2PEngine::check_deadlines() {
  auto late = [](const std::shared_ptr<Request>& r) { return r->deadline.passed(); };
  for (auto& r : posted_)
    if (late(r))
      throw Timeout("recv from " + (r->peer == kAnySource ? std::string("any rank") : comm_.name_of(r->peer)) +
                    " with tag " + std::to_string(r->tag) + " timed out after " +
                    std::to_string(static_cast<int>(comm_.timeout_s())) + " s");
  for (size_t p = 0; p < peers_.size(); ++p) {
    if (!peers_[p].sends.empty() && late(peers_[p].sends.front()))
      throw Timeout("send to " + comm_.name_of(static_cast<int>(p)) + " with tag " +
                    std::to_string(peers_[p].sends.front()->tag) + " timed out after " +
                    std::to_string(static_cast<int>(comm_.timeout_s())) + " s (is it receiving?)");
    const auto& target = peers_[p].in_target;  // a message that stopped coming in
    if (target && late(target))
      throw Timeout("recv from " + comm_.name_of(static_cast<int>(p)) + " with tag " + std::to_string(target->tag) +
                    " timed out after " + std::to_string(static_cast<int>(comm_.timeout_s())) + " s, " +
                    std::to_string(peers_[p].in_payload_got) + " of its " + std::to_string(target->bytes) +
                    " bytes in");
  }
}

void P2PEngine::peer_closed(int p, const PeerError& why) {
  Peer& peer = peers_[p];
  peer.conn.reset();
  auto error = std::make_exception_ptr(PeerError(p, why.what()));
  peer.closed_why = error;
  for (auto& r : peer.sends) r->work->set_failed(error);
  peer.sends.clear();
  if (peer.in_target) peer.in_target->work->set_failed(error);  // its message stopped half-way
  peer.in_target.reset();
  peer.in_spill.reset();
  peer.in_got = peer.in_payload_got = peer.out_done = 0;
  for (auto it = posted_.begin(); it != posted_.end();) {
    if ((*it)->peer == p) {
      (*it)->work->set_failed(error);
      it = posted_.erase(it);
    } else {
      ++it;
    }
  }
}

void P2PEngine::fail_all(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      if (failure_.empty()) failure_ = e.what();
    }
    for (auto& r : inbox_) (r->is_send ? peers_[r->peer].sends.push_back(r) : posted_.push_back(r));
    inbox_.clear();
  }
  for (auto& r : posted_) r->work->set_failed(error);
  posted_.clear();
  for (auto& p : peers_) {
    for (auto& r : p.sends) r->work->set_failed(error);
    p.sends.clear();
    if (p.in_target) p.in_target->work->set_failed(error);
    p.in_target.reset();
    if (p.conn) p.conn->shutdown();
  }
}

void P2PEngine::loop() {
  Backoff backoff;
  std::vector<pollfd> fds;
  while (true) {
    try {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) throw Error(failure_);
      }
      take_new_requests();
      accept_pending();
      ensure_connections();
      bool moved = false, spin = false;
      fds.clear();
      fds.push_back({wake_fd_, POLLIN, 0});
      for (int fd : transports_.dial_fds(kP2PChannel)) fds.push_back({fd, POLLIN, 0});
      for (int p = 0; p < static_cast<int>(peers_.size()); ++p) {
        Peer& peer = peers_[p];
        if (!peer.conn) continue;
        try {
          moved |= pump_send(p);
          moved |= pump_recv(p);
          if (peer.conn->fd() < 0 && (!peer.sends.empty() || wants_reading(p)) && backoff.time_to_check())
            peer.conn->check_peer(wants_reading(p));
        } catch (const PeerError& e) {
          // Gone, or its communicator stopped (it may simply have finished): only what needs
          // it fails; a receive from any source may still be met by another rank.
          peer_closed(p, e);
          continue;
        }
        const bool want_write = !peer.sends.empty(), want_read = wants_reading(p);
        if (!want_write && !want_read) continue;
        if (peer.conn->fd() < 0) {
          spin = true;
        } else {
          fds.push_back({peer.conn->fd(), peer.conn->poll_events(want_read, want_write), 0});
        }
      }
      if (moved) {
        backoff.reset();
        continue;
      }
      check_deadlines();
      if (spin) {
        backoff.pause();
        ::poll(fds.data(), fds.size(), 0);
      } else {
        ::poll(fds.data(), fds.size(), 1000);
      }
      if (fds[0].revents) {
        uint64_t v;
        (void)!::read(wake_fd_, &v, sizeof(v));
      }
    } catch (...) {
      std::exception_ptr error = std::current_exception();
      try {
        std::rethrow_exception(error);
      } catch (const std::exception& e) {
        if (!stopping_) PLEXUS_WARN("point-to-point failed: " << e.what());
      }
      fail_all(error);
      return;
    }
  }
}

}  // namespace plexus
