// Creation and mapping of the shared-memory segments of one host, and their layout.
#include "transport/shm_segment.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#include "base/backoff.h"
#include "base/config.h"
#include "base/error.h"
#include "base/fault.h"
#include "base/log.h"
#include "base/text.h"
#include "bootstrap/rendezvous.h"

namespace plexus {

namespace {

constexpr uint64_t kSegmentMagic = 0x504C58534547ull;  // "PLXSEG"

size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

uint64_t pid_namespace() {
  struct stat st{};
  if (stat("/proc/self/ns/pid", &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_ino);
}

// Whether process `pid` has ended: no such process, or a zombie (killed, and its parent, a
// launcher, has not reaped it yet: kill(pid, 0) still succeeds then). The zombie check reads
// /proc, so a waiter does it on one call in 32 (about every 30 ms of waiting).
bool process_gone(int pid) {
  if (kill(pid, 0) != 0) return errno == ESRCH;
  thread_local unsigned calls = 0;
  if (++calls % 32 != 0) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  const size_t end_of_name = line.rfind(')');  // "pid (name) state ..."; the name may hold spaces
  return end_of_name != std::string::npos && line.size() > end_of_name + 2 && line[end_of_name + 2] == 'Z';
}

// Why this process cannot read `owner`'s memory with process_vm_readv ("" when it can): it
// reads the magic word of the owner's segment where the owner mapped it.
std::string cma_probe(const SegmentHeader& owner, uint64_t my_pid_ns, const std::string& name) {
  if (env_string("PLEXUS_CMA") == "0") return "PLEXUS_CMA=0";
  if (owner.pid_ns != my_pid_ns) return name + " is in another pid namespace";
  uint64_t word = 0;
  iovec local{&word, sizeof(word)};
  iovec remote{reinterpret_cast<void*>(owner.self_addr), sizeof(word)};
  const ssize_t got = process_vm_readv(owner.pid, &local, 1, &remote, 1, 0);
  if (got != static_cast<ssize_t>(sizeof(word)))
    return "process_vm_readv of " + name + " failed: " + (got < 0 ? errno_text(errno) : std::string("short read")) +
           (got < 0 && errno == EPERM ? " (ptrace is not allowed between the ranks: see /proc/sys/kernel/yama/"
                                        "ptrace_scope, or a container without CAP_SYS_PTRACE)"
                                      : "");
  return word == kSegmentMagic ? "" : "process_vm_readv of " + name + " read the wrong memory";
}

std::string segment_name(uint64_t comm_id, int rank) {
  std::ostringstream os;
  os << "/plexus-" << std::hex << comm_id << std::dec << "-" << rank;
  return os.str();
}

// Both phases of setup end with every local rank publishing "ok" or why not; everyone reads
// everyone's answer, so all reach the same decision.
bool agree(Store& store, const std::string& phase, int rank, const std::vector<int>& local_ranks,
           const std::string& my_problem, Deadline deadline, std::string* first_problem) {
  store.set("shm/" + phase + "/" + std::to_string(rank), my_problem.empty() ? "ok" : my_problem);
  bool all_ok = true;
  for (int r : local_ranks) {
    std::string v;
    try {
      v = store.get("shm/" + phase + "/" + std::to_string(r), deadline);
    } catch (const Error&) {  // the wait ran out, or the store closed (its host gave up first)
      throw Timeout("timed out setting up shared memory: rank " + std::to_string(r) +
                    " never said it had " + phase + " its segment (dead, stuck, or not joining)");
    }
    if (v != "ok") {
      if (all_ok) *first_problem = "rank " + std::to_string(r) + ": " + v;
      all_ok = false;
    }
  }
  return all_ok;
}

}  // namespace

size_t ShmLayout::ring_offset(int channel, int from_local) const {
  return round_up(sizeof(SegmentHeader), 4096) +
         static_cast<size_t>(channel * local_size + from_local) * (sizeof(RingHeader) + ring_bytes);
}

size_t ShmLayout::staging_offset(int parity) const {
  return round_up(ring_offset(kShmChannels, 0), 4096) + static_cast<size_t>(parity) * staging_bytes;
}

size_t ShmLayout::total() const { return staging_offset(2); }

std::unique_ptr<ShmHost> ShmHost::create(Store& store, uint64_t comm_id, int rank,
                                         const std::vector<int>& local_ranks,
                                         std::vector<std::string> names, Deadline deadline) {
  std::unique_ptr<ShmHost> host(new ShmHost());
  host->names_of_ = std::move(names);
  host->local_ranks_ = local_ranks;
  host->local_index_ = static_cast<int>(std::find(local_ranks.begin(), local_ranks.end(), rank) -
                                        local_ranks.begin());
  host->my_pid_ns_ = pid_namespace();
  const int n = host->local_size();
  Backoff::set_local_ranks(n);
  ShmLayout& L = host->layout_;
  L.local_size = n;
  L.ring_bytes = round_up(env_bytes("PLEXUS_SHM_RING_BYTES", 1 << 20), 4096);
  L.staging_bytes = round_up(env_bytes("PLEXUS_SHM_STAGING_BYTES", 4 << 20), 4096);
  const size_t total = L.total();
  host->names_.resize(n);
  host->bases_.assign(n, nullptr);
  for (int i = 0; i < n; ++i) host->names_[i] = segment_name(comm_id, local_ranks[i]);

  // Phase 1: create and reserve our own segment.
  std::string problem;
  struct statvfs vfs{};
  if (statvfs("/dev/shm", &vfs) == 0) {
    const double free_mib = static_cast<double>(vfs.f_bavail) * vfs.f_frsize / (1 << 20);
    const double need_mib = static_cast<double>(total) * n / (1 << 20);
    if (free_mib < need_mib) {
      std::ostringstream os;
      os << "/dev/shm has " << static_cast<int>(free_mib) << " MiB free but " << n
         << " local ranks need " << static_cast<int>(need_mib + 1)
         << " MiB (in containers, raise it, e.g. docker --shm-size=1g)";
      problem = os.str();
    }
  }
  const std::string& mine = host->names_[host->local_index_];
  if (problem.empty()) {
    int fd = shm_open(mine.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) {
      problem = "cannot create " + mine + " in /dev/shm: " + errno_text(errno);
    } else {
      int err = posix_fallocate(fd, 0, static_cast<off_t>(total));  // fails now, not with SIGBUS later
      if (err != 0) {
        problem = "cannot reserve " + std::to_string(total >> 20) + " MiB in /dev/shm: " + errno_text(err);
      } else {
        void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
          problem = "cannot map " + mine + ": " + errno_text(errno);
        } else {
          host->bases_[host->local_index_] = static_cast<char*>(p);
          auto* h = new (p) SegmentHeader();
          h->magic = kSegmentMagic;
          h->comm_id = comm_id;
          h->rank = rank;
          h->pid = static_cast<int32_t>(getpid());
          h->pid_ns = host->my_pid_ns_;
          h->self_addr = reinterpret_cast<uint64_t>(p);
          for (int ch = 0; ch < kShmChannels; ++ch)
            for (int from = 0; from < n; ++from) new (&host->ring(ch, host->local_index_, from)) RingHeader();
        }
      }
      close(fd);
      if (!problem.empty()) shm_unlink(mine.c_str());
    }
  }
  fault_point("shm_setup");  // our segment exists, the others' are not mapped yet
  std::string first_problem;
  bool ok = false;
  try {
    ok = agree(store, "created", rank, local_ranks, problem, deadline, &first_problem);
  } catch (...) {  // a local rank never answered: nothing of this setup may stay in /dev/shm
    for (const std::string& name : host->names_) shm_unlink(name.c_str());
    throw;
  }

  // Phase 2: map everyone else's (and try reading each through CMA).
  problem.clear();
  std::string cma_problem;
  for (int i = 0; ok && i < n && problem.empty(); ++i) {
    if (i == host->local_index_) continue;
    int fd = shm_open(host->names_[i].c_str(), O_RDWR, 0);
    if (fd < 0) {
      problem = "cannot open " + host->names_[i] + ": " + errno_text(errno);
      continue;
    }
    void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
      problem = "cannot map " + host->names_[i] + ": " + errno_text(errno);
      continue;
    }
    host->bases_[i] = static_cast<char*>(p);
    if (host->header(i).magic != kSegmentMagic || host->header(i).comm_id != comm_id)
      problem = host->names_[i] + " is not this communicator's segment";
    else if (cma_problem.empty())
      cma_problem = cma_probe(host->header(i), host->my_pid_ns_, host->names_of_[i]);
  }
  if (host->bases_[host->local_index_])
    host->header(host->local_index_).cma_ok.store(cma_problem.empty() ? 1 : 2, std::memory_order_release);
  try {
    if (ok) ok = agree(store, "mapped", rank, local_ranks, problem, deadline, &first_problem);
  } catch (...) {
    for (const std::string& name : host->names_) shm_unlink(name.c_str());
    throw;
  }
  // Everyone has mapped (or given up): the names are no longer needed. Each rank unlinks them
  // all, so a rank that dies during setup leaves nothing behind in /dev/shm either.
  for (const std::string& name : host->names_) shm_unlink(name.c_str());
  if (!ok) {
    // Leave together: the rank hosting the store must not go (if it then fails) while the
    // others still read the answers above.
    store_barrier(store, "shm/gave_up", host->local_index_, n, deadline);
    PLEXUS_WARN("shared memory is not usable between the " << n << " ranks on this host ("
                << first_problem << "); falling back to TCP");
    return nullptr;  // the destructor unmaps what was mapped
  }
  // Every rank probed before it agreed "mapped": the answers are all there, the same for all.
  host->cma_ = true;
  for (int i = 0; i < n && host->cma_; ++i) {
    if (host->header(i).cma_ok.load(std::memory_order_acquire) == 1) continue;
    host->cma_ = false;
    if (i != host->local_index_) cma_problem = host->names_of_[i] + " cannot read its peers' memory";
  }
  PLEXUS_INFO("shared memory between " << n << " local ranks: " << (total >> 10) << " KiB per rank; CMA "
                                       << (host->cma_ ? "usable" : "not usable: " + cma_problem));
  return host;
}

ShmHost::~ShmHost() {
  for (char* b : bases_)
    if (b) munmap(b, layout_.total());
}

int ShmHost::local_index_of(int rank) const {
  auto it = std::find(local_ranks_.begin(), local_ranks_.end(), rank);
  return it == local_ranks_.end() ? -1 : static_cast<int>(it - local_ranks_.begin());
}

SegmentHeader& ShmHost::header(int local) const {
  return *reinterpret_cast<SegmentHeader*>(bases_[local]);
}

RingHeader& ShmHost::ring(int channel, int owner_local, int from_local) const {
  return *reinterpret_cast<RingHeader*>(bases_[owner_local] + layout_.ring_offset(channel, from_local));
}

char* ShmHost::ring_data(int channel, int owner_local, int from_local) const {
  return bases_[owner_local] + layout_.ring_offset(channel, from_local) + sizeof(RingHeader);
}

std::atomic<uint64_t>& ShmHost::counter(int local, RoundCounter c) const {
  SegmentHeader& h = header(local);
  return c == RoundCounter::kArrived ? h.arrived : c == RoundCounter::kReduced ? h.reduced : h.done;
}

char* ShmHost::staging(int local, int parity) const {
  return bases_[local] + layout_.staging_offset(parity);
}

void ShmHost::mark_aborted(const std::string& why) {
  SegmentHeader& h = header(local_index_);
  if (h.aborted.load(std::memory_order_acquire)) return;
  size_t n = std::min(why.size(), sizeof(h.abort_message) - 1);
  std::memcpy(h.abort_message, why.data(), n);
  h.abort_message[n] = '\0';
  h.aborted.store(1, std::memory_order_release);
}

void ShmHost::check_peer(int local) const {
  const SegmentHeader& h = header(local);
  const int rank = local_ranks_[local];
  if (h.aborted.load(std::memory_order_acquire)) {
    const std::string why(h.abort_message, strnlen(h.abort_message, sizeof(h.abort_message)));
    throw PeerReportedError(rank, names_of_[local] + " reported an error: " + printable_text(why));
  }
  if (h.pid_ns == my_pid_ns_ && h.pid > 0 && process_gone(h.pid))
    throw PeerError(rank, names_of_[local] + " (pid " + std::to_string(h.pid) +
                              ") died: its process is gone");
}

}  // namespace plexus
