// Setup of a communicator (identity, transports, shape), its op queue and progress thread,
// connections on demand, and failing every peer with the reason when an op fails.
#include "core/communicator.h"

#include <poll.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <unistd.h>

#include "base/config.h"
#include "base/error.h"
#include "base/log.h"
#include "transport/frame.h"
#include "transport/host_memory.h"
#include "tuner/cost_model.h"

namespace plexus {

namespace {

// Rebuilds an exception of the same kind with `prefix` in front of its message, so that the
// error names the op and the rank that saw it.
std::exception_ptr with_context(std::exception_ptr ep, const std::string& prefix) {
  try {
    std::rethrow_exception(ep);
  } catch (const PeerError& e) {
    return std::make_exception_ptr(PeerError(e.peer, prefix + e.what()));
  } catch (const Timeout& e) {
    return std::make_exception_ptr(Timeout(prefix + e.what()));
  } catch (const std::exception& e) {
    return std::make_exception_ptr(Error(prefix + e.what()));
  } catch (...) {
    return std::make_exception_ptr(Error(prefix + "unknown error"));
  }
}

bool is_timeout_or_peer_error(std::exception_ptr ep) {
  try {
    std::rethrow_exception(ep);
  } catch (const Timeout&) {
    return true;
  } catch (const PeerError&) {
    return true;
  } catch (...) {
    return false;
  }
}

}  // namespace

Communicator::Communicator(std::shared_ptr<Store> store, int rank, int size, double timeout_s,
                           std::vector<int> global_ranks)
    : id_(agree_identity(*store, rank, size, Deadline::after_seconds(timeout_s))),
      timeout_s_(timeout_s),
      global_ranks_(std::move(global_ranks)),
      store_(store) {
  Deadline deadline = Deadline::after_seconds(timeout_s);
  if (global_ranks_.empty())
    for (int r = 0; r < size; ++r) global_ranks_.push_back(r);
  if (static_cast<int>(global_ranks_.size()) != size)
    throw InvalidArgument("global_ranks must list one rank per group rank");
  recorder_ = std::make_unique<FlightRecorder>(id_.comm_id, rank, size, global_ranks_);
  install_flight_dump_signal();
  std::vector<std::string> names;
  for (int r = 0; r < size; ++r) names.push_back(name_of(r));
  const TransportSetup setup{*store, id_, std::move(names), deadline};
  transports_ = std::make_unique<TransportSet>(setup);
  Endpoint mine{this_host_id(), transports_->addresses()};
  endpoints_ = exchange_endpoints(*store, rank, size, mine, deadline);
  conns_.resize(static_cast<size_t>(size));
  transports_->start(setup, endpoints_);
  model_ = cost_model_from_env();
  setup_shape(*store, deadline);
  p2p_ = std::make_unique<P2PEngine>(*this, *transports_);
  direct_ = std::make_unique<DirectMessages>(*this, *transports_);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  abort_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0 || abort_fd_ < 0) throw Error("eventfd failed: " + errno_text(errno));
  thread_ = std::thread([this] { progress_loop(); });
  try {
    // Nobody leaves the rendezvous before all ranks have read every endpoint: rank 0 may shut
    // the store down as soon as it returns.
    store_barrier(*store, "ready", rank, size, deadline);
  } catch (...) {
    abort("rendezvous failed");
    thread_.join();
    close(wake_fd_);
    close(abort_fd_);
    throw;
  }
  std::string reachable;
  for (const auto& [name, address] : mine.addresses)
    reachable += (reachable.empty() ? "" : ", ") + name + (address.empty() ? "" : " at " + address);
  PLEXUS_INFO("communicator " << std::hex << id_.comm_id << std::dec << ": rank " << rank << " of "
                              << size << " reachable by " << reachable);
}

void Communicator::setup_shape(Store& store, Deadline deadline) {
  std::vector<std::string> hosts;  // in order of their first rank
  std::vector<int> host_of(size()), count;
  for (int p = 0; p < size(); ++p) {
    auto it = std::find(hosts.begin(), hosts.end(), endpoints_[p].host_id);
    host_of[p] = static_cast<int>(it - hosts.begin());
    if (it == hosts.end()) {
      hosts.push_back(endpoints_[p].host_id);
      count.push_back(0);
    }
    ++count[host_of[p]];
  }
  shape_.ranks = size();
  shape_.hosts = static_cast<int>(hosts.size());
  shape_.local = *std::max_element(count.begin(), count.end());
  shape_.uniform = *std::min_element(count.begin(), count.end()) == shape_.local;
  shape_.shm = host_memory() != nullptr;
  shape_.cma = shape_.shm && host_memory()->cma();
  if (shape_.hosts > 1 && (shape_.local > 1 || transports_->fabric_possible())) {
    // Each host decided about shared memory, and each pair about its transport, on its own; the
    // tuner needs one answer everywhere.
    const int mine_failed = count[host_of[rank()]] > 1 && !host_memory() ? 1 : 0;
    int off_fabric = 0;  // pairs of this rank to other hosts that are not on a fabric
    for (int p = 0; p < size(); ++p) off_fabric += host_of[p] != host_of[rank()] && !transports_->fabric_to(p);
    store.add("shape/shm_failed", mine_failed);
    store.add("shape/off_fabric", off_fabric);
    store_barrier(store, "shape", rank(), size(), deadline);
    if (shape_.local > 1) shape_.shm = store.add("shape/shm_failed", 0) == 0;
    shape_.ucx = store.add("shape/off_fabric", 0) == 0;
  }
  if (shape_.hosts > 1 && shape_.uniform && shape_.local > 1 && shape_.shm) {
    // One communicator per position on a host, across the hosts: the middle of hierarchical
    // all-reduce.
    const int my_host = host_of[rank()];
    int position = 0;
    for (int p = 0; p < rank(); ++p) position += host_of[p] == my_host;
    std::vector<int> members;
    for (int p = 0; p < size(); ++p) {
      int pos = 0;
      for (int q = 0; q < p; ++q) pos += host_of[q] == host_of[p];
      if (pos == position) members.push_back(global_ranks_[p]);
    }
    cross_ = std::make_unique<Communicator>(
        std::make_shared<PrefixStore>(store_, "cross/" + std::to_string(position) + "/"), my_host,
        shape_.hosts, timeout_s_, members);
    cross_->set_cost_model(model_);
    cross_->internal_ = true;
  }
}

std::string Communicator::name_of(int r) const {
  return "rank " + std::to_string(r >= 0 && r < static_cast<int>(global_ranks_.size()) ? global_ranks_[r] : r);
}

const char* Communicator::transport_to(int peer) const {
  if (peer < 0 || peer >= size())
    throw InvalidArgument("transport_to: " + std::to_string(peer) + " is not a rank of this group");
  return transports_->name_to(peer);
}

Communicator::~Communicator() {
  if (made_before_fork(generation_)) {
    // A forked child: its copy of the parent's threads does not run and must not be joined, and
    // closing streams would end the parent's. Left alone, as the child's exit leaves them.
    new std::thread(std::move(thread_));
    (void)p2p_.release();
    (void)direct_.release();
    (void)cross_.release();
    (void)transports_.release();
    (void)recorder_.release();  // its registry's lock may have been held by a parent thread
    for (auto& c : conns_) (void)c.release();
    return;
  }
  cross_.reset();
  abort("the communicator was destroyed");
  if (thread_.joinable()) thread_.join();
  p2p_.reset();
  direct_.reset();
  for (auto& c : conns_)
    if (c) c->shutdown();
  if (wake_fd_ >= 0) close(wake_fd_);
  if (abort_fd_ >= 0) close(abort_fd_);
}

void Communicator::check_not_forked() const {
  if (made_before_fork(generation_))
    throw Error("plexus " + name_of(rank()) + ": this group was made before a fork and this is the forked child (pid " +
                std::to_string(getpid()) + "): a child cannot use its parent's groups, whose connections and threads "
                "are the parent's; make a new process group in the child");
}

std::shared_ptr<Work> Communicator::submit(const Signature& sig, std::function<void(OpContext&)> body,
                                           const char* algorithm, bool blocking) {
  check_not_forked();
  Op op;
  op.sig = sig;
  op.body = std::move(body);
  op.work = std::make_shared<Work>(sig);
  auto work = op.work;
  bool run_here = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {  // the progress thread may be gone: nobody would run it
      work->set_failed(std::make_exception_ptr(
          Error("plexus " + name_of(rank()) + ": " + sig.describe() + " failed: aborted: " + abort_reason_)));
      return work;
    }
    op.seq = next_seq_++;
    run_here = blocking && in_flight_ == 0;
    recorder_->submitted(op.seq, sig, algorithm, run_here);
    op.recorded_running = run_here;
    ++in_flight_;
    if (!run_here) queue_.push_back(std::move(op));
  }
  if (!run_here) {
    wake();
    return work;
  }
  {
    std::lock_guard<std::mutex> exec(exec_mu_);
    run_op(op);
  }
  std::lock_guard<std::mutex> lock(mu_);
  --in_flight_;
  return work;
}

void Communicator::abort(const std::string& why) {
  // A forked child's abort would write the descriptor it shares with the parent (whose waits
  // would then spin) and take locks a parent thread may have held at the fork.
  if (made_before_fork(generation_)) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    abort_reason_ = why;
  }
  aborted_.store(true);
  uint64_t one = 1;
  (void)!::write(abort_fd_, &one, sizeof(one));  // never drained: readable for every waiter
  if (p2p_) p2p_->abort(why);
  if (direct_) direct_->abort(why);
  if (cross_) cross_->abort(why);
  wake();
}

void Communicator::wake() {
  uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof(one));
}

void Communicator::drain_wake() {
  uint64_t v;
  (void)!::read(wake_fd_, &v, sizeof(v));
}

void Communicator::check_abort() {
  if (!aborted_.load()) return;
  std::lock_guard<std::mutex> lock(mu_);
  throw Error("aborted: " + abort_reason_);
}

void Communicator::accept_pending() {
  while (auto conn = transports_->accept_one(kCollectiveChannel)) {
    int p = conn->peer();
    if (conns_[p]) {
      PLEXUS_WARN("refused a second connection claiming to be " << name_of(p));
      continue;
    }
    conns_[p] = std::move(conn);
  }
}

Connection& Communicator::connection(int peer, Deadline deadline) {
  if (conns_[peer]) return *conns_[peer];
  if (!failure_.empty()) throw Error("communicator is unusable after an earlier failure");
  Transport& transport = transports_->to(peer);
  conns_[peer] = transport.connect(peer, kCollectiveChannel, deadline);
  while (!conns_[peer]) {  // the peer dials us
    check_abort();
    if (deadline.passed()) {
      const std::string where = transport.peer_address(peer, kCollectiveChannel);
      throw PeerError(peer, "timed out waiting for " + name_of(peer) + (where.empty() ? "" : " (" + where + ")") +
                                " to connect");
    }
    if (wait_for_dial(deadline.poll_ms(1000), false)) accept_pending();
  }
  return *conns_[peer];
}

bool Communicator::wait_for_dial(int timeout_ms, bool progress_thread) {
  std::vector<pollfd> fds{{abort_fd_, POLLIN, 0}, {progress_thread ? wake_fd_ : -1, POLLIN, 0}};
  for (int fd : dial_fds()) fds.push_back({fd, POLLIN, 0});
  ::poll(fds.data(), fds.size(), timeout_ms);
  if (fds[1].revents) drain_wake();
  return std::any_of(fds.begin() + 2, fds.end(), [](const pollfd& p) { return p.revents != 0; });
}

void Communicator::idle_wait() {
  if (!wait_for_dial(1000, true)) return;
  std::unique_lock<std::mutex> exec(exec_mu_, std::try_to_lock);
  if (exec.owns_lock())
    accept_pending();
  else  // an op runs on a caller's thread and accepts for itself; do not spin on the listener
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

void Communicator::progress_loop() {
  while (true) {
    Op op;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!queue_.empty()) {
        op = std::move(queue_.front());
        queue_.pop_front();
      } else if (stopping_) {
        break;
      }
    }
    if (!op.work) {
      idle_wait();
      continue;
    }
    {
      std::lock_guard<std::mutex> exec(exec_mu_);
      run_op(op);
    }
    std::lock_guard<std::mutex> lock(mu_);
    --in_flight_;
  }
  // Stopped (abort(), or the communicator goes): peers that wait on this rank, or will, learn
  // why now (an error frame, the shared-memory abort flag) rather than at their timeout.
  std::string why;
  {
    std::lock_guard<std::mutex> lock(mu_);
    why = "aborted: " + abort_reason_;
  }
  std::lock_guard<std::mutex> exec(exec_mu_);
  if (failure_.empty()) fail_connections(why);
}

void Communicator::run_op(Op& op) {
  OpContext ctx(*this, op.sig, op.seq, Deadline::after_seconds(timeout_s_));
  auto prefix = [&] { return "plexus " + name_of(rank()) + ": " + ctx.describe() + " failed: "; };
  if (!failure_.empty()) {
    op.work->set_failed(std::make_exception_ptr(
        Error(prefix() + "the communicator is unusable after an earlier failure (" + failure_ + ")")));
    return;
  }
  if (!op.recorded_running) recorder_->started(op.seq);
  try {
    check_abort();
    PLEXUS_TRACE("start " << ctx.describe());
    op.body(ctx);
    PLEXUS_TRACE("done " << ctx.describe());
    recorder_->ended(op.seq, "");
    op.work->set_done();
  } catch (...) {
    auto ep = with_context(std::current_exception(), prefix());
    failure_ = message_of(ep);
    PLEXUS_WARN(failure_);
    recorder_->ended(op.seq, failure_);
    if (is_timeout_or_peer_error(ep)) flight_dump_to_dir(ctx.describe() + " failed");
    fail_connections(failure_);
    op.work->set_failed(ep);
  }
}

namespace {

// Writes all of `data` (or zeros when null) unless the deadline passes or the peer is gone.
bool write_fully(Connection& c, const void* data, size_t n, Deadline deadline) {
  static const char zeros[4096] = {};
  size_t sent = 0;
  try {
    while (sent < n && !deadline.passed()) {
      iovec v;
      v.iov_base = data ? const_cast<char*>(static_cast<const char*>(data) + sent) : const_cast<char*>(zeros);
      v.iov_len = data ? n - sent : std::min(n - sent, sizeof(zeros));
      size_t k = c.write_some(&v, 1);
      if (k == 0) {
        pollfd p{c.fd(), c.poll_events(false, true), 0};
        ::poll(&p, 1, 10);
      }
      sent += k;
    }
  } catch (const Error&) {
    return false;  // the peer is gone already
  }
  return sent == n;
}

}  // namespace

void Communicator::fail_connections(const std::string& why) {
  transports_->announce_failure(why);  // for peers that wait on us without a stream
  // Peers waiting on us learn the reason from an error frame instead of a bare disconnect. A
  // frame cut short is first padded out, so that the error frame starts where one is expected.
  Deadline deadline = Deadline::after_seconds(1.0);
  FrameHeader h{};
  h.magic = kFrameMagic;
  h.version = kWireVersion;
  h.type = static_cast<uint8_t>(FrameType::kError);
  h.comm_id = id_.comm_id;
  h.payload_bytes = why.size();
  for (auto& c : conns_) {
    if (!c || c->fd() < 0) continue;
    if (write_fully(*c, nullptr, c->frame_left, deadline)) {
      c->frame_left = 0;
      if (write_fully(*c, &h, sizeof(h), deadline)) write_fully(*c, why.data(), why.size(), deadline);
    }
    c->shutdown();
  }
}

}  // namespace plexus
