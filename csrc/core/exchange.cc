// The exchange engine: framing, header checks, dependencies between sends and receives, and
// the poll loop over every stream of an op.
#include "core/exchange.h"

#include <algorithm>
#include <poll.h>

#include <string>

#include "base/backoff.h"
#include "base/error.h"
#include "base/fault.h"
#include "base/log.h"
#include "base/text.h"
#include "core/communicator.h"

namespace plexus {

namespace {
constexpr size_t kMaxErrorText = 1 << 20;
}

Exchange::Exchange(OpContext& ctx) : ctx_(ctx), comm_(ctx.communicator()) {}

Exchange::Stream& Exchange::stream(int peer) {
  for (auto& s : streams_)
    if (s.peer == peer) return s;
  if (peer < 0 || peer >= ctx_.size() || peer == ctx_.rank())
    throw Error("internal: bad peer " + std::to_string(peer));
  streams_.emplace_back();
  streams_.back().peer = peer;
  return streams_.back();
}

int Exchange::recv(int peer, void* dst, size_t bytes, std::function<void()> on_arrival, int after) {
  int id = static_cast<int>(recvs_.size());
  recvs_.push_back(RecvItem{dst, bytes, std::move(on_arrival), after});
  arrived_.push_back(0);
  stream(peer).recvs.push_back(id);
  return id;
}

void Exchange::send(int peer, const void* src, size_t bytes, int after) {
  int id = static_cast<int>(sends_.size());
  sends_.push_back(SendItem{src, bytes, after, {}});
  stream(peer).sends.push_back(id);
}

void Exchange::send_after(int peer, const void* src, size_t bytes, std::vector<int> after) {
  int id = static_cast<int>(sends_.size());
  sends_.push_back(SendItem{src, bytes, -1, std::move(after)});
  stream(peer).sends.push_back(id);
}

bool Exchange::pump_sends(Stream& s, bool* want_write) {
  bool moved = false;
  while (s.next_send < s.sends.size()) {
    const SendItem& item = sends_[s.sends[s.next_send]];
    if (!item.ready(arrived_)) break;
    if (s.out_done == 0) s.out_header = FrameHeader::data(comm_.id(), ctx_.seq, ctx_.sig, item.bytes);
    const size_t hsize = sizeof(FrameHeader);
    iovec iov[2];
    int n = 0;
    if (s.out_done < hsize) {
      iov[n++] = {reinterpret_cast<char*>(&s.out_header) + s.out_done, hsize - s.out_done};
      if (item.bytes) iov[n++] = {const_cast<void*>(item.src), item.bytes};
    } else {
      size_t off = s.out_done - hsize;
      iov[n++] = {static_cast<char*>(const_cast<void*>(item.src)) + off, item.bytes - off};
    }
    size_t k = s.conn->write_some(iov, n);
    if (k == 0) {
      *want_write = true;
      break;
    }
    moved = true;
    s.out_done += k;
    fault_point("send");  // part of a frame is on the wire
    s.conn->frame_left = hsize + item.bytes - s.out_done;
    if (s.conn->frame_left == 0) {
      s.out_done = 0;
      ++s.next_send;
    }
  }
  return moved;
}

void Exchange::throw_peer_error_frame(Stream& s) {
  // The peer failed and says why; read its message (bounded) and pass it on.
  const uint64_t claimed = s.in_header.payload_bytes;  // a copy: the header is packed
  const size_t len = static_cast<size_t>(std::min<uint64_t>(claimed, kMaxErrorText));
  std::string text(len, '\0');
  size_t got = 0;
  Deadline d = Deadline::after_seconds(2.0);
  try {
    while (got < len && !d.passed()) {
      size_t k = s.conn->read_some(&text[got], len - got);
      if (k == 0) {
        pollfd p{s.conn->fd(), POLLIN, 0};
        ::poll(&p, 1, 10);
      }
      got += k;
    }
  } catch (const Error&) {
  }
  text.resize(got);
  throw PeerReportedError(s.peer, s.conn->peer_name() + " reported an error: " + printable_text(text));
}

void Exchange::check_header(Stream& s, const RecvItem& item) {
  const FrameHeader& h = s.in_header;
  const int p = s.peer;
  const std::string& them = s.conn->peer_name();
  if (h.magic != kFrameMagic || h.version != kWireVersion)
    throw PeerError(p, them + " sent bytes that are not a plexus frame");
  if (h.type == static_cast<uint8_t>(FrameType::kError)) throw_peer_error_frame(s);
  if (h.type != static_cast<uint8_t>(FrameType::kData))
    throw PeerError(p, them + " sent a frame of the wrong kind on the collective channel");
  if (h.comm_id != comm_.id()) throw PeerError(p, them + " sent a frame of another communicator");
  Signature theirs = h.signature();
  if (h.seq != ctx_.seq || theirs != ctx_.sig)
    throw Error(collective_mismatch(comm_.name_of(ctx_.rank()), ctx_.sig, ctx_.seq, them, theirs, h.seq));
  if (h.payload_bytes != item.bytes)
    throw Error(them + " sent " + std::to_string(h.payload_bytes) + " bytes where " +
                std::to_string(item.bytes) + " were expected");
}

bool Exchange::pump_recvs(Stream& s, bool* want_read) {
  bool moved = false;
  const size_t hsize = sizeof(FrameHeader);
  while (s.next_recv < s.recvs.size()) {
    const int id = s.recvs[s.next_recv];
    RecvItem& item = recvs_[id];
    if (s.in_header_got == 0 && item.after >= 0 && !arrived_[item.after]) break;
    if (s.in_header_got < hsize) {
      size_t k = s.conn->read_some(reinterpret_cast<char*>(&s.in_header) + s.in_header_got,
                                   hsize - s.in_header_got);
      if (k == 0) {
        *want_read = true;
        break;
      }
      moved = true;
      s.in_header_got += k;
      if (s.in_header_got < hsize) continue;
      check_header(s, item);
    }
    if (s.in_payload_got < item.bytes) {
      size_t k = s.conn->read_some(static_cast<char*>(item.dst) + s.in_payload_got,
                                   item.bytes - s.in_payload_got);
      if (k == 0) {
        *want_read = true;
        break;
      }
      moved = true;
      s.in_payload_got += k;
      if (s.in_payload_got < item.bytes) continue;
    }
    if (item.on_arrival) item.on_arrival();
    arrived_[id] = 1;
    s.in_header_got = s.in_payload_got = 0;
    ++s.next_recv;
    moved = true;
  }
  return moved;
}

void Exchange::throw_timeout() {
  std::string waiting;
  for (auto& s : streams_) {
    if (s.next_recv < s.recvs.size()) waiting += " receive from " + comm_.name_of(s.peer) + ";";
    if (s.next_send < s.sends.size()) waiting += " send to " + comm_.name_of(s.peer) + ";";
  }
  throw Timeout("timed out after " + std::to_string(static_cast<int>(comm_.timeout_s())) +
                " s; still waiting to" + waiting +
                " (a peer may be stuck, dead, or in a different call)");
}

void Exchange::run() {
  for (auto& s : streams_) s.conn = &comm_.connection(s.peer, ctx_.deadline);
  try {
    drive();
  } catch (const PeerReportedError&) {
    throw;
  } catch (const PeerError&) {
    rethrow_with_cause(std::current_exception());
  }
}

void Exchange::rethrow_with_cause(std::exception_ptr original) {
  Deadline deadline = Deadline::after_seconds(0.25);
  std::vector<char> silent(streams_.size(), 0);
  const size_t hsize = sizeof(FrameHeader);
  while (!deadline.passed()) {
    std::vector<pollfd> fds;
    for (size_t i = 0; i < streams_.size(); ++i) {
      Stream& s = streams_[i];
      if (silent[i] || s.conn->fd() < 0) continue;
      try {
        bool want = false;
        if (s.next_recv < s.recvs.size()) {
          pump_recvs(s, &want);  // an error frame behind the data throws PeerReportedError
        } else if (s.in_header_got < hsize) {
          // Nothing expected from this peer: anything it sent now is an error frame or nothing.
          s.in_header_got += s.conn->read_some(reinterpret_cast<char*>(&s.in_header) + s.in_header_got,
                                               hsize - s.in_header_got);
          if (s.in_header_got == hsize) {
            if (s.in_header.type == static_cast<uint8_t>(FrameType::kError)) throw_peer_error_frame(s);
            silent[i] = 1;
          }
        }
        fds.push_back({s.conn->fd(), POLLIN, 0});
      } catch (const PeerReportedError&) {
        throw;
      } catch (const std::exception&) {
        silent[i] = 1;
      }
    }
    if (fds.empty()) break;
    ::poll(fds.data(), fds.size(), 10);
  }
  std::rethrow_exception(original);
}

void Exchange::drive() {
  std::vector<pollfd> fds;
  std::vector<std::pair<Connection*, bool>> polled;  // waiting without a descriptor (shared memory), reading?
  Backoff backoff;
  while (true) {
    bool all_done = true, moved = false;
    fds.clear();
    polled.clear();
    fds.push_back({comm_.abort_fd(), POLLIN, 0});
    for (auto& s : streams_) {
      if (s.done()) continue;
      bool want_write = false, want_read = false;
      moved |= pump_sends(s, &want_write);
      moved |= pump_recvs(s, &want_read);
      if (!s.done()) all_done = false;
      if (!want_write && !want_read) continue;
      if (s.conn->fd() < 0) {
        polled.push_back({s.conn, want_read});
      } else {
        fds.push_back({s.conn->fd(), s.conn->poll_events(want_read, want_write), 0});
      }
    }
    if (all_done) return;
    if (moved) {
      backoff.reset();
      continue;
    }
    if (!polled.empty()) {
      // Shared-memory peers are checked by looking: spin, then back off; look at sockets
      // without blocking in between.
      backoff.pause();
      if (!backoff.time_to_check()) continue;
      for (const auto& [c, reading] : polled) c->check_peer(reading);
    }
    comm_.check_abort();
    if (ctx_.deadline.passed()) throw_timeout();
    // Peers dialing in (and strangers' handshakes) matter only while this rank would wait.
    const size_t dialers = fds.size();
    for (int fd : comm_.dial_fds()) fds.push_back({fd, POLLIN, 0});
    ::poll(fds.data(), fds.size(), polled.empty() ? ctx_.deadline.poll_ms(1000) : 0);
    if (fds[0].revents) comm_.check_abort();
    for (size_t i = dialers; i < fds.size(); ++i)
      if (fds[i].revents) {
        comm_.accept_pending();
        break;
      }
  }
}

}  // namespace plexus
