// UCX transport (InfiniBand / RoCE, or whatever UCX_TLS allows), over UCP tagged messages. A
// communicator has one worker per channel (collectives and point-to-point are driven by
// different threads, and a worker's wakeup descriptor serves one waiter), and one endpoint per
// peer on each, with peer error handling where UCX can give it, so that a dead peer fails the
// calls that wait on it. A stream to a peer is a sequence of messages tagged (channel, sender's
// rank, message number): the receiver probes for the next number, so the bytes come out in
// order whatever order UCX matches them in.
//
// Each worker has a progress thread: it progresses the worker while events come (a send UCX took
// moves only then, also after the engine that wrote it went on to other work) and sleeps on
// UCX's wakeup descriptor otherwise, so an idle communicator costs no CPU. The engines that drive
// connections (core/exchange, core/p2p) also progress it in read_some/write_some, and sleep on
// fd(): UCX's descriptor, and a signal from the progress thread when it moved something.
//
// UCX is loaded only when some pair would use it: by default pairs on different hosts whose
// UCX has an InfiniBand/RoCE transport; with "ucx" in PLEXUS_TRANSPORTS, every pair that no
// earlier transport of the table connects.
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "base/config.h"
#include "base/error.h"
#include "base/fork.h"
#include "base/log.h"
#include "transport/message_port.h"
#include "transport/transport.h"
#include "transport/ucx/library.h"

namespace plexus {

namespace {

constexpr size_t kMessageMax = 4u << 20;    // bytes per message: large writes become several
constexpr size_t kSendWindow = 16u << 20;   // bytes in flight per stream (as a socket buffer)
constexpr size_t kSmallMessage = 8u << 10;  // sent from the caller's memory when UCX takes it at once
constexpr int kSmallParts = 4;              // ... from up to this many pieces (a frame has two)
constexpr int kRankBits = 22, kSeqBits = 40;
constexpr double kFlushSeconds = 2.0;  // for sends still in flight when a stream ends
constexpr int kPortChannel = kChannels;  // the tag channel of the message port's messages
static_assert(kSeqBits == MessagePort::kTagBits, "a port tag fills the sequence bits");

ucp_tag_t tag_of(int channel, int sender, uint64_t seq) {
  return (static_cast<ucp_tag_t>(channel) << (kRankBits + kSeqBits)) |
         (static_cast<ucp_tag_t>(sender) << kSeqBits) | (seq & ((ucp_tag_t{1} << kSeqBits) - 1));
}

std::string to_hex(const std::string& data) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : data) {
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

std::string from_hex(const std::string& s) {
  std::string out(s.size() / 2, '\0');
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<char>(std::stoi(s.substr(2 * i, 2), nullptr, 16));
  return out;
}

// One endpoint; `failed` is set by UCX's callback.
struct Endpoint {
  ucp_ep_h ep = nullptr;
  ucs_status_t failed = UCS_OK;
  bool reports_failure = true;  // peer error handling (UCX's shared-memory transports lack it)
  pid_t pid = 0;                // the peer's, when on this host: looked at without it
};

// A message of the message port in flight (UcxPort, below).
struct PortMessage {
  void* request = nullptr;  // UCX's
  int peer = 0;
  bool is_send = false;
  size_t bytes = 0;
  Deadline deadline;
  MessagePort::Done done;
  bool finished = false;   // UCX called back
  ucs_status_t status = UCS_OK;
  size_t length = 0;       // received
  bool reported = false;   // `done` was called (a send given up on may still be in flight)
  std::exception_ptr why;  // what it fails with, when we gave up on it
};

// A communicator's worker for one channel and its endpoints, shared by the transport and its
// connections (which may outlive it), used under `mutex`.
struct Worker {
  const ucx::Api& api;
  ucp_worker_h worker = nullptr;
  int efd = -1;    // UCX's wakeup descriptor
  int ready = -1;  // always readable: what fd() gives when events are already pending
  int generation = fork_generation();
  std::mutex mutex;
  std::map<int, std::unique_ptr<Endpoint>> endpoints;  // by peer rank
  // UCX moves data only while someone progresses the worker, and the engines stop calling a
  // connection once they wrote all they had (a socket carries on by itself). The progress thread
  // progresses while events come and sleeps on UCX's descriptor otherwise; it tells the engine,
  // which sleeps on `notify`, whenever it moved something.
  int notify = -1;
  int waits = -1;  // an epoll set of efd and notify, what the engine sleeps on
  int stop = -1;
  int kick = -1;  // wakes the progress thread for a new port message
  bool stopping = false;
  std::unique_ptr<std::thread> progress_thread;  // left alone (leaked) in a forked child
  // The port's messages in flight, and those it gave up on that UCX still holds. While one is
  // unfinished the progress thread spins (as NCCL's proxy does): UCX's descriptor may not say
  // when a copy of CUDA memory ends.
  std::list<std::unique_ptr<PortMessage>> port_messages;

  bool network;  // UCX has a network transport (not only shared memory)

  explicit Worker(const ucx::Library& lib) : api(lib.api), network(lib.network) {
    ucp_worker_params_t params{};
    params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    params.thread_mode = UCS_THREAD_MODE_SERIALIZED;  // our mutex serializes its users
    ucs_status_t st = api.worker_create(lib.context, &params, &worker);
    if (st != UCS_OK) throw Error("ucx: ucp_worker_create: " + ucx::status_text(st));
    st = api.worker_get_efd(worker, &efd);
    ready = eventfd(1, EFD_CLOEXEC);
    notify = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    stop = eventfd(0, EFD_CLOEXEC);
    kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    waits = epoll_create1(EPOLL_CLOEXEC);
    bool ok = st == UCS_OK && ready >= 0 && notify >= 0 && stop >= 0 && kick >= 0 && waits >= 0;
    for (int fd : {efd, notify}) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ok = ok && epoll_ctl(waits, EPOLL_CTL_ADD, fd, &ev) == 0;
    }
    if (!ok) {
      api.worker_destroy(worker);
      for (int fd : {ready, notify, stop, kick, waits})
        if (fd >= 0) close(fd);
      throw Error("ucx: no wakeup descriptor: " + (st != UCS_OK ? ucx::status_text(st) : errno_text(errno)));
    }
    progress_thread = std::make_unique<std::thread>([this] { run_progress(); });
  }
  ~Worker() {
    if (forked()) {  // a forked child leaves the parent's UCX alone (and has no such thread)
      progress_thread.release();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex);
      stopping = true;
    }
    const uint64_t one = 1;
    if (write(stop, &one, sizeof(one)) < 0) std::terminate();  // an eventfd takes it
    progress_thread->join();
    std::unique_lock<std::mutex> lock(mutex);
    give_up_port_messages(lock, "the communicator was destroyed");
    drain_unexpected();
    for (auto& [peer, e] : endpoints) {
      ucp_request_param_t param{};
      param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
      param.flags = UCP_EP_CLOSE_FLAG_FORCE;
      wait(api.ep_close_nbx(e->ep, &param), 0.5);
    }
    reap_port_messages(lock);  // what the closed endpoints ended
    api.worker_destroy(worker);
    // What UCX never finished fails now: with the worker gone nothing writes into it any more.
    const auto destroyed = std::make_exception_ptr(Error("the communicator was destroyed"));
    for (auto& m : port_messages)
      if (!m->reported) m->done(m->why ? m->why : destroyed, 0);
    for (int fd : {ready, notify, stop, kick, waits}) close(fd);
  }
  void run_progress() {
    std::unique_lock<std::mutex> lock(mutex);
    while (!stopping) {
      unsigned moved = 0;
      for (unsigned k; moved < 1024 && (k = api.worker_progress(worker)) != 0;) moved += k;
      const bool port_busy = reap_port_messages(lock);
      if (moved || port_busy) {
        const uint64_t one = 1;
        if (moved && write(notify, &one, sizeof(one)) < 0) {
        }  // the counter only saturates: the engine is told already
        lock.unlock();
        std::this_thread::yield();
        lock.lock();
        continue;
      }
      if (api.worker_arm(worker) == UCS_ERR_BUSY) continue;  // events came in meanwhile
      lock.unlock();
      pollfd fds[3] = {{efd, POLLIN, 0}, {stop, POLLIN, 0}, {kick, POLLIN, 0}};
      ::poll(fds, 3, 100);  // the timeout only guards against an event UCX might not signal
      uint64_t count;
      while (read(kick, &count, sizeof(count)) > 0) {
      }
      lock.lock();
    }
  }
  // --- the message port's messages (under `mutex`) ---
  bool peer_gone(int peer) const {
    auto it = endpoints.find(peer);
    if (it == endpoints.end()) return false;
    const Endpoint& e = *it->second;
    return e.failed != UCS_OK || (!e.reports_failure && e.pid > 0 && kill(e.pid, 0) != 0 && errno == ESRCH);
  }
  // Gives up on an unfinished message: a receive is cancelled (UCX calls back), a send fails now
  // and stays listed until UCX lets go of it.
  void give_up(PortMessage& m, std::exception_ptr why) {
    m.why = std::move(why);
    if (!m.is_send) api.request_cancel(worker, m.request);
  }
  // What finished, or passed its deadline, or lost its peer, fails or completes: the callbacks
  // run with the mutex released. Returns whether messages are still in flight.
  bool reap_port_messages(std::unique_lock<std::mutex>& lock) {
    std::vector<std::function<void()>> calls;
    bool busy = false;
    for (auto it = port_messages.begin(); it != port_messages.end();) {
      PortMessage& m = **it;
      if (!m.finished) {
        if (!m.why && m.deadline.passed()) {
          give_up(m, std::make_exception_ptr(Timeout("ucx: a message of " + std::to_string(m.bytes) + " bytes to or from rank " +
                                                     std::to_string(m.peer) + " timed out")));
        } else if (!m.why && peer_gone(m.peer)) {
          give_up(m, std::make_exception_ptr(PeerError(m.peer, "ucx: the peer of a message was lost: it probably died")));
        }
        // A send given up on fails now (UCX cannot take it back); a receive once UCX let go of it,
        // or at once if its peer is gone (nothing can write into it any more). Both stay listed,
        // and keep `done` (what owns their memory) until UCX lets go.
        if (m.why && !m.reported && (m.is_send || peer_gone(m.peer))) {
          m.reported = true;
          calls.push_back([done = m.done, why = m.why] { done(why, 0); });
        }
        busy |= !m.reported;
        ++it;
        continue;
      }
      api.request_free(m.request);
      if (!m.reported) {
        std::exception_ptr error = m.why;
        if (!error && m.status == UCS_ERR_MESSAGE_TRUNCATED)
          error = std::make_exception_ptr(Error("ucx: a message was longer than its receive's " +
                                                std::to_string(m.bytes) + " bytes"));
        else if (!error && m.status != UCS_OK)
          error = std::make_exception_ptr(PeerError(m.peer, "ucx: a message failed: " + ucx::status_text(m.status)));
        calls.push_back([done = std::move(m.done), error, n = m.is_send ? m.bytes : m.length] { done(error, n); });
      }
      it = port_messages.erase(it);
    }
    if (!calls.empty()) {
      lock.unlock();
      for (auto& call : calls) call();
      lock.lock();
    }
    return busy;
  }
  // Fails every message in flight with Error(why) and waits (a while) until UCX let go of the
  // receives' memory.
  void give_up_port_messages(std::unique_lock<std::mutex>& lock, const std::string& why) {
    auto error = std::make_exception_ptr(Error(why));
    for (auto& m : port_messages)
      if (!m->finished && !m->why) give_up(*m, error);
    Deadline deadline = Deadline::after_seconds(kFlushSeconds);
    auto receiving = [&] {
      for (auto& m : port_messages)
        if (!m->is_send && !m->reported) return true;
      return false;
    };
    do {
      progress();
      reap_port_messages(lock);
    } while (receiving() && !deadline.passed());
  }
  bool forked() const { return made_before_fork(generation); }  // UCX state is unusable after a fork
  void require_owner() const {
    if (forked())
      throw Error("ucx: this communicator's UCX state was made before a fork, and this is the forked child (pid " +
                  std::to_string(getpid()) + "): UCX cannot be used across fork; create the group in the child");
  }
  void progress() {
    for (int i = 0; i < 16 && api.worker_progress(worker); ++i) {
    }
  }
  // Progresses until `req` completes or `seconds` pass; frees it. Its status (UCS_OK for none).
  ucs_status_t wait(ucs_status_ptr_t req, double seconds) {
    if (!UCS_PTR_IS_PTR(req)) return UCS_PTR_STATUS(req);
    Deadline deadline = Deadline::after_seconds(seconds);
    ucs_status_t st;
    while ((st = api.request_check_status(req)) == UCS_INPROGRESS && !deadline.passed()) progress();
    api.request_free(req);
    return st;
  }
  // Messages nobody received (a peer's end-of-stream after ours): taken, so UCX does not warn.
  void drain_unexpected() {
    progress();
    ucp_tag_recv_info_t info{};
    std::vector<char> sink;
    while (ucp_tag_message_h m = api.tag_probe_nb(worker, 0, 0, 1, &info)) {
      sink.resize(info.length);
      ucp_request_param_t param{};
      wait(api.tag_msg_recv_nbx(worker, sink.data(), info.length, m, &param), 0.5);
    }
  }
  Endpoint& endpoint(int peer, const std::string& address, pid_t local_pid) {
    auto& e = endpoints[peer];
    if (e) return *e;
    e = std::make_unique<Endpoint>();
    e->pid = local_pid;
    ucp_ep_params_t params{};
    params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.address = reinterpret_cast<const ucp_address_t*>(address.data());
    params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    params.err_handler.cb = [](void* arg, ucp_ep_h, ucs_status_t status) {
      static_cast<Endpoint*>(arg)->failed = status;
    };
    params.err_handler.arg = e.get();
    if (!network) {  // UCX's shared memory cannot report a dead peer (it would refuse, and say so)
      params.err_mode = UCP_ERR_HANDLING_MODE_NONE;
      e->reports_failure = false;
    }
    ucs_status_t st = api.ep_create(worker, &params, &e->ep);
    if (st == UCS_ERR_UNREACHABLE && e->reports_failure) {  // the same, for a pair UCX joins by memory
      params.err_mode = UCP_ERR_HANDLING_MODE_NONE;
      e->reports_failure = false;
      st = api.ep_create(worker, &params, &e->ep);
    }
    if (st != UCS_OK) {
      endpoints.erase(peer);
      throw Error("ucx: ucp_ep_create to rank " + std::to_string(peer) + ": " + ucx::status_text(st));
    }
    return *e;
  }
};

class UcxConnection : public Connection {
 public:
  UcxConnection(int peer, std::string peer_name, std::shared_ptr<Worker> worker, Endpoint& ep, int channel, int me)
      : Connection(peer, std::move(peer_name)), w_(std::move(worker)), ep_(ep), channel_(channel), me_(me) {}
  ~UcxConnection() override;
  size_t write_some(const iovec* iov, int iovcnt) override;
  size_t read_some(void* dst, size_t n) override;
  int fd() const override;
  short poll_events(bool, bool) const override { return POLLIN; }
  void shutdown() override;
  void check_peer(bool reading) override;

 private:
  struct Message {
    std::vector<char> data;   // ours, unless it lands in the reader's memory
    char* direct = nullptr;   // that memory
    size_t length = 0;
    void* request = nullptr;  // in flight while set
    size_t read = 0;          // received into `data`: bytes the reader took
  };
  void reap_sends();
  // The peer's next message on this stream, if it has come (`remove`: taken off UCX's queue).
  ucp_tag_message_h probe_next(bool remove, ucp_tag_recv_info_t* info) const;
  // Starts receiving the peer's next message, if it has come.
  void receive_next(void* dst, size_t n);
  void drop_receives();
  bool has_news() const;  // whether a call would get further now (under the mutex)
  void check_alive();
  [[noreturn]] void broken(const std::string& what);
  bool complete(Message& m);  // whether m's request is done (throws on its failure)
  std::vector<char> buffer(size_t n);

  std::shared_ptr<Worker> w_;
  Endpoint& ep_;  // owned by the worker, which outlives this connection
  int channel_, me_;
  uint64_t send_seq_ = 0, recv_seq_ = 0;
  std::deque<Message> sending_, receiving_;
  size_t in_flight_ = 0;
  bool ended_ = false;     // the peer ended the stream
  bool shut_ = false;      // we did
  std::vector<std::vector<char>> spare_;  // buffers to reuse
};

UcxConnection::~UcxConnection() {
  if (w_->forked()) return;
  shutdown();
  std::lock_guard<std::mutex> lock(w_->mutex);
  for (auto& m : sending_) w_->wait(m.request, 0.1);
}

void UcxConnection::drop_receives() {
  // A receive may be landing in the reader's memory, which is not ours to write once the call
  // that gave it has ended: cancelled and waited for.
  for (auto& m : receiving_)
    if (m.request) {
      w_->api.request_cancel(w_->worker, m.request);
      w_->wait(m.request, 1.0);
    }
  receiving_.clear();
}

int UcxConnection::fd() const {
  // The engine sleeps on both UCX's descriptor (armed here: the wake-up for what arrives) and the
  // progress thread's `notify` (read empty here: what the thread did before is seen below, what
  // it does after wakes the engine).
  std::lock_guard<std::mutex> lock(w_->mutex);
  uint64_t count;
  while (read(w_->notify, &count, sizeof(count)) > 0) {
  }
  if (has_news() || w_->api.worker_arm(w_->worker) != UCS_OK) return w_->ready;
  return w_->waits;
}

bool UcxConnection::has_news() const {
  if (ep_.failed != UCS_OK || w_->forked()) return true;
  if (!sending_.empty() && w_->api.request_check_status(sending_.front().request) != UCS_INPROGRESS) return true;
  if (!receiving_.empty())
    return !receiving_.front().request || w_->api.request_check_status(receiving_.front().request) != UCS_INPROGRESS;
  ucp_tag_recv_info_t info{};
  return !ended_ && probe_next(false, &info);
}

ucp_tag_message_h UcxConnection::probe_next(bool remove, ucp_tag_recv_info_t* info) const {
  return w_->api.tag_probe_nb(w_->worker, tag_of(channel_, peer(), recv_seq_), ~ucp_tag_t{0}, remove, info);
}

void UcxConnection::broken(const std::string& what) {
  throw PeerError(peer(), "ucx connection to " + peer_name() + " " + what);
}

void UcxConnection::check_alive() {
  if (ep_.failed != UCS_OK) broken("was lost: " + ucx::status_text(ep_.failed) + ": the peer process probably died");
  if (!ep_.reports_failure && ep_.pid > 0 && kill(ep_.pid, 0) != 0 && errno == ESRCH)
    broken("was lost: the peer process (pid " + std::to_string(ep_.pid) + ") is gone");
}

std::vector<char> UcxConnection::buffer(size_t n) {
  std::vector<char> b;
  if (!spare_.empty()) {
    b = std::move(spare_.back());
    spare_.pop_back();
  }
  b.resize(n);
  return b;
}

bool UcxConnection::complete(Message& m) {
  if (!m.request) return true;
  ucs_status_t st = w_->api.request_check_status(m.request);
  if (st == UCS_INPROGRESS) return false;
  w_->api.request_free(m.request);
  m.request = nullptr;
  if (st != UCS_OK) broken("failed: " + ucx::status_text(st) + ": the peer process probably died");
  return true;
}

void UcxConnection::reap_sends() {
  while (!sending_.empty() && complete(sending_.front())) {
    in_flight_ -= sending_.front().data.size();
    spare_.push_back(std::move(sending_.front().data));
    sending_.pop_front();
  }
}

size_t UcxConnection::write_some(const iovec* iov, int iovcnt) {
  w_->require_owner();
  std::lock_guard<std::mutex> lock(w_->mutex);
  w_->progress();
  check_alive();
  reap_sends();
  size_t total = 0;
  for (int i = 0; i < iovcnt; ++i) total += iov[i].iov_len;
  if (total == 0) return 0;
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  param.memory_type = UCS_MEMORY_TYPE_HOST;
  const ucp_tag_t tag = tag_of(channel_, me_, send_seq_);
  // A frame's header goes alone in front of a large payload, so that the reader, which reads the
  // header first, can receive the payload straight into its destination.
  if (total > kSmallMessage && iovcnt > 1 && iov[0].iov_len <= kSmallMessage) {
    total = iov[0].iov_len;
    iovcnt = 1;
  }
  if (total <= kSmallMessage && sending_.empty() && iovcnt <= kSmallParts) {
    // From the caller's memory, if UCX copies it out before returning.
    ucp_dt_iov_t parts[kSmallParts];
    for (int i = 0; i < iovcnt; ++i) parts[i] = {iov[i].iov_base, iov[i].iov_len};
    ucp_request_param_t now = param;
    now.op_attr_mask |= UCP_OP_ATTR_FIELD_DATATYPE | UCP_OP_ATTR_FLAG_FORCE_IMM_CMPL;
    now.datatype = UCP_DATATYPE_IOV;
    ucs_status_ptr_t r = w_->api.tag_send_nbx(ep_.ep, parts, static_cast<size_t>(iovcnt), tag, &now);
    if (!UCS_PTR_IS_ERR(r) || UCS_PTR_STATUS(r) != UCS_ERR_NO_RESOURCE) {
      ucs_status_t st = w_->wait(r, kFlushSeconds);  // done already: UCX starts nothing it cannot finish now
      if (st != UCS_OK) broken("failed to send: " + ucx::status_text(st));
      ++send_seq_;
      return total;
    }
  }
  if (in_flight_ >= kSendWindow) return 0;
  const size_t n = std::min({total, kMessageMax, kSendWindow - in_flight_});
  Message m;
  m.data = buffer(n);
  size_t copied = 0;
  for (int i = 0; i < iovcnt && copied < n; ++i) {
    size_t k = std::min(iov[i].iov_len, n - copied);
    std::memcpy(m.data.data() + copied, iov[i].iov_base, k);
    copied += k;
  }
  ucs_status_ptr_t r = w_->api.tag_send_nbx(ep_.ep, m.data.data(), n, tag, &param);
  if (UCS_PTR_IS_ERR(r)) broken("failed to send: " + ucx::status_text(UCS_PTR_STATUS(r)));
  ++send_seq_;
  if (r == nullptr) {
    spare_.push_back(std::move(m.data));
    return n;
  }
  m.request = r;
  in_flight_ += n;
  sending_.push_back(std::move(m));
  return n;
}

void UcxConnection::receive_next(void* dst, size_t n) {
  ucp_tag_recv_info_t info{};
  ucp_tag_message_h msg = probe_next(true, &info);
  if (!msg) return;
  ++recv_seq_;
  Message m;
  // A large message the reader has room for lands in its memory; others in a buffer of ours.
  const bool direct = info.length > kSmallMessage && info.length <= n;
  if (direct) {
    m.direct = static_cast<char*>(dst);
  } else {
    m.data = buffer(info.length);
  }
  m.length = info.length;
  if (info.length == 0) ended_ = true;  // the end of the stream (shutdown)
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  param.memory_type = UCS_MEMORY_TYPE_HOST;
  ucs_status_ptr_t r = w_->api.tag_msg_recv_nbx(w_->worker, direct ? dst : m.data.data(), info.length, msg, &param);
  if (UCS_PTR_IS_ERR(r)) broken("failed to receive: " + ucx::status_text(UCS_PTR_STATUS(r)));
  m.request = UCS_PTR_IS_PTR(r) ? r : nullptr;
  receiving_.push_back(std::move(m));
}

size_t UcxConnection::read_some(void* dst, size_t n) {
  w_->require_owner();
  std::lock_guard<std::mutex> lock(w_->mutex);
  if (n == 0) return 0;
  w_->progress();
  if (receiving_.empty() && !ended_) receive_next(dst, n);
  if (receiving_.empty()) {
    check_alive();
    return 0;
  }
  Message& m = receiving_.front();
  if (m.direct && m.direct != dst)
    throw Error("ucx connection to " + peer_name() + ": a read moved while a message was landing in it");
  if (!complete(m)) {
    check_alive();  // a message cut short by the peer's death completes with an error, or never
    return 0;
  }
  if (m.length == 0) broken("was closed by the peer: the peer process probably died or aborted");
  size_t k = m.length;
  if (!m.direct) {
    k = std::min(n, m.length - m.read);
    std::memcpy(dst, m.data.data() + m.read, k);
    m.read += k;
    if (m.read < m.length) return k;
    spare_.push_back(std::move(m.data));
  }
  receiving_.pop_front();
  return k;
}

void UcxConnection::check_peer(bool reading) {
  w_->require_owner();
  std::lock_guard<std::mutex> lock(w_->mutex);
  w_->progress();
  // What the peer sent before it went is read first (read_some throws once it is consumed).
  if (reading && !receiving_.empty() && !receiving_.front().request) return;
  ucp_tag_recv_info_t info{};
  if (reading && receiving_.empty() && probe_next(false, &info)) return;
  check_alive();
}

void UcxConnection::shutdown() {
  if (w_->forked()) return;
  std::lock_guard<std::mutex> lock(w_->mutex);
  if (shut_) return;
  shut_ = true;
  drop_receives();
  // What was written goes out first (as a socket's buffered bytes would), while the peer lives.
  Deadline deadline = Deadline::after_seconds(kFlushSeconds);
  try {
    while (!sending_.empty() && ep_.failed == UCS_OK && !deadline.passed()) {
      w_->progress();
      reap_sends();
    }
  } catch (const PeerError&) {
    return;
  }
  if (ep_.failed != UCS_OK) return;
  ucp_request_param_t param{};
  w_->wait(w_->api.tag_send_nbx(ep_.ep, nullptr, 0, tag_of(channel_, me_, send_seq_++), &param), 0.5);
}

// What a rank publishes in the store once it tried to load UCX.
struct PeerUcx {
  bool ok = false;
  std::string problem;  // when not
  std::string version;
  bool rdma = false;
  int port = 0;  // what its message port moves: 0 nothing (PLEXUS_UCX_DEVICE=0), 1 host memory, 2 CUDA too
  pid_t pid = 0;
  std::string address[kChannels];  // its workers'
};

std::string encode(const PeerUcx& p) {
  if (!p.ok) {
    std::string problem = p.problem;
    std::replace(problem.begin(), problem.end(), '|', '/');
    return "no|" + problem;
  }
  std::string v = "ok|" + p.version + "|" + (p.rdma ? "1" : "0") + "|" + std::to_string(p.port) + "|" +
                  std::to_string(p.pid);
  for (const auto& a : p.address) v += "|" + to_hex(a);
  return v;
}

PeerUcx decode(const std::string& v) {
  std::vector<std::string> f;
  for (size_t at = 0;;) {
    size_t bar = v.find('|', at);
    f.push_back(v.substr(at, bar == std::string::npos ? std::string::npos : bar - at));
    if (bar == std::string::npos) break;
    at = bar + 1;
  }
  PeerUcx p;
  if (f[0] != "ok" || f.size() != 5 + kChannels) {
    p.problem = f.size() > 1 ? f[1] : v;
    return p;
  }
  p.ok = true;
  p.version = f[1];
  p.rdma = f[2] == "1";
  p.port = std::stoi(f[3]);
  p.pid = static_cast<pid_t>(std::stol(f[4]));
  for (int c = 0; c < kChannels; ++c) p.address[c] = from_hex(f[5 + c]);
  return p;
}

std::string major_minor(const std::string& version) { return version.substr(0, version.rfind('.')); }

void port_sent(void*, ucs_status_t status, void* user) {
  auto* m = static_cast<PortMessage*>(user);
  m->finished = true;
  m->status = status;
}

void port_received(void*, ucs_status_t status, const ucp_tag_recv_info_t* info, void* user) {
  auto* m = static_cast<PortMessage*>(user);
  m->finished = true;
  m->status = status;
  if (status == UCS_OK && info) m->length = info->length;
}

// The message port (transport/message_port.h) over the point-to-point worker: a message is one
// UCP tagged message from and into the caller's memory, with its memory type, so UCX moves
// device memory itself. Its tags: the port's channel, the sender, the caller's tag.
class UcxPort : public MessagePort {
 public:
  struct Peer {
    std::string address;  // its point-to-point worker's
    pid_t pid = 0;        // on this host, or 0
    int moves = 0;        // PeerUcx::port of the pair: the lesser of both ranks'
  };
  UcxPort(std::shared_ptr<Worker> worker, int me, std::vector<Peer> peers)
      : w_(std::move(worker)), me_(me), peers_(std::move(peers)) {}
  bool reaches(int peer, MemoryKind memory) const override {
    return peer >= 0 && peer < static_cast<int>(peers_.size()) &&
           peers_[peer].moves >= (memory == MemoryKind::kCuda ? 2 : 1);
  }
  void send(int peer, uint64_t tag, const void* buf, size_t bytes, MemoryKind memory, Deadline deadline,
            Done done) override {
    post(true, peer, tag, const_cast<void*>(buf), bytes, memory, deadline, std::move(done));
  }
  void recv(int peer, uint64_t tag, void* buf, size_t bytes, MemoryKind memory, Deadline deadline,
            Done done) override {
    post(false, peer, tag, buf, bytes, memory, deadline, std::move(done));
  }
  void cancel_all(const std::string& why) override {
    if (w_->forked()) return;
    std::unique_lock<std::mutex> lock(w_->mutex);
    w_->give_up_port_messages(lock, why);
  }

 private:
  void post(bool is_send, int peer, uint64_t tag, void* buf, size_t bytes, MemoryKind memory, Deadline deadline,
            Done done);
  std::shared_ptr<Worker> w_;
  int me_;
  std::vector<Peer> peers_;
};

void UcxPort::post(bool is_send, int peer, uint64_t tag, void* buf, size_t bytes, MemoryKind memory,
                   Deadline deadline, Done done) {
  w_->require_owner();
  if (!reaches(peer, memory)) throw Error("ucx: no message port reaches rank " + std::to_string(peer));
  auto m = std::make_unique<PortMessage>();
  m->peer = peer;
  m->is_send = is_send;
  m->bytes = bytes;
  m->deadline = deadline;
  ucp_tag_recv_info_t info{};
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_MEMORY_TYPE | UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.memory_type = memory == MemoryKind::kCuda ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST;
  param.user_data = m.get();
  std::unique_lock<std::mutex> lock(w_->mutex);
  Endpoint& ep = w_->endpoint(peer, peers_[peer].address, peers_[peer].pid);
  ucs_status_ptr_t r;
  if (is_send) {
    param.cb.send = port_sent;
    r = w_->api.tag_send_nbx(ep.ep, buf, bytes, tag_of(kPortChannel, me_, tag), &param);
  } else {
    param.op_attr_mask |= UCP_OP_ATTR_FIELD_RECV_INFO;
    param.recv_info.tag_info = &info;
    param.cb.recv = port_received;
    r = w_->api.tag_recv_nbx(w_->worker, buf, bytes, tag_of(kPortChannel, peer, tag), ~ucp_tag_t{0}, &param);
  }
  if (UCS_PTR_IS_PTR(r)) {
    m->request = r;
    m->done = std::move(done);
    w_->port_messages.push_back(std::move(m));
    const uint64_t one = 1;
    if (write(w_->kick, &one, sizeof(one)) < 0) {
    }  // the counter only saturates: the thread is woken already
    return;
  }
  lock.unlock();
  const ucs_status_t st = UCS_PTR_STATUS(r);
  if (st == UCS_OK) {
    done(nullptr, is_send ? bytes : info.length);
  } else if (st == UCS_ERR_MESSAGE_TRUNCATED) {
    done(std::make_exception_ptr(Error("ucx: a message was longer than its receive's " + std::to_string(bytes) +
                                       " bytes")), 0);
  } else {
    done(std::make_exception_ptr(PeerError(peer, "ucx: a message failed: " + ucx::status_text(st))), 0);
  }
}

class UcxTransport : public Transport {
 public:
  explicit UcxTransport(const TransportSetup& setup);
  std::string address() const override { return explicit_ ? "named" : "default"; }
  void start(const TransportSetup& setup, const std::vector<PeerEndpoint>& peers) override;
  bool can_connect(int peer) const override { return peer < static_cast<int>(usable_.size()) && usable_[peer]; }
  std::string why_not(int peer) const override;
  std::unique_ptr<Connection> connect(int peer, int channel, Deadline deadline) override;
  bool fabric() const override { return true; }
  MessagePort* message_port() override { return port_.get(); }

 private:
  bool wanted(int peer, const std::vector<PeerEndpoint>& peers) const;
  PeerUcx load();

  bool explicit_;  // PLEXUS_TRANSPORTS names ucx
  int me_;
  std::vector<std::string> names_;
  std::shared_ptr<Worker> workers_[kChannels];
  std::vector<char> usable_;
  std::vector<std::string> why_not_;
  std::vector<PeerUcx> peers_;
  std::vector<pid_t> local_pid_;  // of peers on this host (0 for others)
  std::unique_ptr<UcxPort> port_;  // once some peer is usable
};

bool named_in_setting() {
  const std::string s = "," + env_string("PLEXUS_TRANSPORTS") + ",";
  return s.find(",ucx,") != std::string::npos;
}

UcxTransport::UcxTransport(const TransportSetup& setup)
    : explicit_(named_in_setting()), me_(setup.id.rank), names_(setup.names) {}

// Whether this rank and `peer` would use UCX if it loads: both opened the transport, and they are
// on different hosts or both named ucx. Both ranks of a pair reach the same answer.
bool UcxTransport::wanted(int peer, const std::vector<PeerEndpoint>& peers) const {
  if (peer == me_ || !peers[peer].uses) return false;
  return peers[peer].host_id != peers[me_].host_id || (explicit_ && peers[peer].address == "named");
}

PeerUcx UcxTransport::load() {
  PeerUcx mine;
  if (!explicit_ && !ucx::rdma_devices_present()) {
    mine.problem = "no InfiniBand or RoCE device here (/sys/class/infiniband is empty)";
    return mine;
  }
  const ucx::Library& lib = ucx::library();
  mine.problem = lib.problem;
  if (lib.ok) {
    try {
      for (int c = 0; c < kChannels; ++c) {
        workers_[c] = std::make_shared<Worker>(lib);
        ucp_address_t* addr = nullptr;
        size_t len = 0;
        ucs_status_t st = lib.api.worker_get_address(workers_[c]->worker, &addr, &len);
        if (st != UCS_OK) throw Error("ucx: ucp_worker_get_address: " + ucx::status_text(st));
        mine.address[c] = std::string(reinterpret_cast<char*>(addr), len);
        lib.api.worker_release_address(workers_[c]->worker, addr);
      }
      mine.ok = true;
      mine.version = lib.version;
      mine.rdma = lib.rdma;
      mine.port = env_string("PLEXUS_UCX_DEVICE") == "0" ? 0 : lib.cuda_memory ? 2 : 1;
      mine.pid = getpid();
    } catch (const Error& e) {
      for (auto& w : workers_) w.reset();
      mine = PeerUcx{};
      mine.problem = e.what();
    }
  }
  static std::atomic<bool> warned{false};  // once per process, not per group
  if (!mine.ok && explicit_ && !warned.exchange(true)) PLEXUS_WARN("ucx: not used: " << mine.problem);
  return mine;
}

void UcxTransport::start(const TransportSetup& setup, const std::vector<PeerEndpoint>& peers) {
  const int n = static_cast<int>(peers.size());
  usable_.assign(n, 0);
  why_not_.assign(n, "");
  peers_.assign(n, PeerUcx{});
  local_pid_.assign(n, 0);
  bool any = false;
  for (int p = 0; p < n; ++p) any |= wanted(p, peers);
  const std::string only_between = explicit_ ? "ucx: the other rank does not name ucx in PLEXUS_TRANSPORTS"
                                             : "ucx is used by default only between hosts";
  for (int p = 0; p < n; ++p)
    if (!wanted(p, peers)) why_not_[p] = !peers[p].uses ? names_[p] + " does not allow ucx" : only_between;
  if (!any) return;
  const PeerUcx mine = load();  // UCX loads here, on first use
  setup.store.set("ucx/" + std::to_string(me_), encode(mine));
  std::string mismatch;
  for (int p = 0; p < n; ++p) {
    if (!wanted(p, peers)) continue;
    PeerUcx theirs = decode(setup.store.get("ucx/" + std::to_string(p), setup.deadline));
    if (!mine.ok) {
      why_not_[p] = "ucx: " + mine.problem;
    } else if (!theirs.ok) {
      why_not_[p] = "ucx: " + names_[p] + " has none: " + theirs.problem;
    } else if (major_minor(theirs.version) != major_minor(mine.version)) {
      if (mismatch.empty())
        mismatch = "ucx: the ranks have different UCX versions, which cannot connect: " + names_[me_] + " has " +
                   mine.version + ", " + names_[p] + " has " + theirs.version +
                   " (give every rank the same UCX, e.g. with PLEXUS_UCX_LIBRARY)";
    } else if (!explicit_ && !(mine.rdma && theirs.rdma)) {
      why_not_[p] = "ucx is used by default only where both ranks have InfiniBand or RoCE";
    } else {
      usable_[p] = 1;
      // Its pid tells whether it lives, if this rank sees it (not from another pid namespace).
      if (peers[p].host_id == peers[me_].host_id && kill(theirs.pid, 0) == 0) local_pid_[p] = theirs.pid;
      peers_[p] = std::move(theirs);
    }
  }
  if (!mismatch.empty()) throw Error(mismatch);
  std::vector<UcxPort::Peer> ports(n);
  bool any_port = false;
  for (int p = 0; p < n; ++p) {
    if (!usable_[p]) continue;
    ports[p] = {peers_[p].address[kP2PChannel], local_pid_[p], std::min(mine.port, peers_[p].port)};
    any_port = true;
  }
  if (any_port) port_ = std::make_unique<UcxPort>(workers_[kP2PChannel], me_, std::move(ports));
}

std::string UcxTransport::why_not(int peer) const {
  if (peer < static_cast<int>(why_not_.size()) && !why_not_[peer].empty()) return why_not_[peer];
  return "ucx does not reach " + names_[peer];
}

std::unique_ptr<Connection> UcxTransport::connect(int peer, int channel, Deadline deadline) {
  Worker& w = *workers_[channel];
  w.require_owner();
  std::lock_guard<std::mutex> lock(w.mutex);
  Endpoint& ep = w.endpoint(peer, peers_[peer].address[channel], local_pid_[peer]);
  return std::make_unique<UcxConnection>(peer, names_[peer], workers_[channel], ep, channel, me_);
}

}  // namespace

std::unique_ptr<Transport> open_ucx(const TransportSetup& setup) { return std::make_unique<UcxTransport>(setup); }

}  // namespace plexus
