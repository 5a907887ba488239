// The flight recorder (see flight_recorder.h): rings of calls, and their JSON dumps.
#include "core/flight_recorder.h"

#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "base/config.h"
#include "base/log.h"

namespace plexus {

namespace {

std::mutex g_registry_mu;
std::set<const FlightRecorder*>& registry() {
  static std::set<const FlightRecorder*> live;
  return live;
}

// The coarse wall clock (a few ms of resolution, 3 ns a read where the precise one takes 23 ns
// on a VM): enough to tell what hangs and since when, at a cost a 1 us call does not notice.
double now_s() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME_COARSE, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string trace_dir() {
  std::string dir = env_string("PLEXUS_TRACE_DIR");
  if (!dir.empty()) return dir;
  std::string tmp = env_string("TMPDIR", "/tmp");
  return tmp + "/plexus-trace";
}

int g_signal_pipe[2] = {-1, -1};

void on_sigusr1(int) {
  const char c = 'd';
  (void)!::write(g_signal_pipe[1], &c, 1);  // async-signal-safe: the thread does the rest
}

}  // namespace

FlightRecorder::FlightRecorder(uint64_t comm_id, int rank, int size, std::vector<int> global_ranks)
    : comm_id_(comm_id),
      rank_(rank),
      size_(size),
      global_ranks_(std::move(global_ranks)),
      ring_(std::max<size_t>(1, env_bytes("PLEXUS_TRACE_BUFFER", 2000))) {
  std::lock_guard<std::mutex> lock(g_registry_mu);
  registry().insert(this);
}

FlightRecorder::~FlightRecorder() {
  std::lock_guard<std::mutex> lock(g_registry_mu);
  registry().erase(this);
}

void FlightRecorder::submitted(uint64_t seq, const Signature& sig, const char* algorithm, bool running) {
  const double now = now_s();
  std::lock_guard<std::mutex> lock(mu_);
  Entry& e = ring_[(seq - 1) % ring_.size()];
  e.seq = seq;
  e.sig = sig;
  e.algorithm = algorithm ? algorithm : "";
  e.state = running ? "running" : "queued";
  e.submitted = now;
  e.started = running ? now : 0;
  e.ended = 0;
  e.error.clear();
  last_ = seq;
}

FlightRecorder::Entry* FlightRecorder::find(uint64_t seq) {
  Entry& e = ring_[(seq - 1) % ring_.size()];
  return e.seq == seq ? &e : nullptr;  // else overwritten by a later call already
}

void FlightRecorder::started(uint64_t seq) {
  const double now = now_s();
  std::lock_guard<std::mutex> lock(mu_);
  if (Entry* e = find(seq)) {
    e->state = "running";
    e->started = now;
  }
}

void FlightRecorder::ended(uint64_t seq, const std::string& error) {
  const double now = now_s();
  std::lock_guard<std::mutex> lock(mu_);
  if (Entry* e = find(seq)) {
    e->state = error.empty() ? "done" : "failed";
    e->ended = now;
    e->error = error;
  }
}

std::string FlightRecorder::json() const {
  std::ostringstream os;
  os.precision(17);
  char id[17];
  std::snprintf(id, sizeof(id), "%016llx", static_cast<unsigned long long>(comm_id_));
  os << "{\"id\": \"" << id << "\", \"rank\": " << rank_ << ", \"size\": " << size_ << ", \"global_ranks\": [";
  for (size_t i = 0; i < global_ranks_.size(); ++i) os << (i ? ", " : "") << global_ranks_[i];
  os << "], \"entries\": [";
  std::lock_guard<std::mutex> lock(mu_);
  bool first = true;
  const uint64_t n = ring_.size();
  for (uint64_t seq = last_ > n ? last_ - n + 1 : 1; seq <= last_; ++seq) {  // oldest first
    const Entry& e = ring_[(seq - 1) % n];
    os << (first ? "" : ", ") << "{\"seq\": " << e.seq << ", \"op\": \"" << coll_name(e.sig.kind)
       << "\", \"signature\": " << quoted(e.sig.describe()) << ", \"count\": " << e.sig.count
       << ", \"dtype\": \"" << dtype_name(e.sig.dtype) << "\", \"redop\": \"" << op_name(e.sig.op)
       << "\", \"root\": " << e.sig.root << ", \"algorithm\": \"" << e.algorithm << "\", \"state\": \""
       << e.state << "\", \"submitted\": " << e.submitted << ", \"started\": " << e.started
       << ", \"ended\": " << e.ended << ", \"error\": " << quoted(e.error) << "}";
    first = false;
  }
  os << "]}";
  return os.str();
}

std::string flight_dump_json() {
  std::ostringstream os;
  os.precision(17);
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  os << "{\"tool\": \"plexus flight recorder\", \"version\": 1, \"rank\": " << log_rank() << ", \"pid\": "
     << getpid() << ", \"host\": " << quoted(host) << ", \"time\": " << now_s()
     << ", \"clock\": \"coarse wall clock, a few ms of resolution\", \"communicators\": [";
  std::lock_guard<std::mutex> lock(g_registry_mu);
  bool first = true;
  for (const FlightRecorder* r : registry()) {
    os << (first ? "" : ", ") << r->json();
    first = false;
  }
  os << "]}";
  return os.str();
}

std::string flight_dump_to_dir(const std::string& why) {
  const std::string dir = trace_dir();
  ::mkdir(dir.c_str(), 0700);
  const std::string path = dir + "/rank" + std::to_string(log_rank()) + "-pid" + std::to_string(getpid()) + ".json";
  // Written aside and renamed, so a reader (plexus trace, a watcher) never sees half a file; one
  // dump at a time (groups failing together dump together), since they share the names.
  static std::mutex dumping;
  std::lock_guard<std::mutex> lock(dumping);
  const std::string partial = dir + "/.rank" + std::to_string(log_rank()) + "-pid" + std::to_string(getpid()) + ".partial";
  {
    std::ofstream f(partial, std::ios::trunc);
    if (!(f << flight_dump_json() << "\n") || !f.flush()) {
      PLEXUS_WARN("flight recorder: cannot write " << partial);
      ::unlink(partial.c_str());
      return "";
    }
  }
  if (::rename(partial.c_str(), path.c_str()) != 0) {
    PLEXUS_WARN("flight recorder: cannot rename " << partial << " to " << path << ": " << std::strerror(errno));
    ::unlink(partial.c_str());
    return "";
  }
  PLEXUS_WARN("flight recorder written to " << path << " (" << why << "); `plexus trace " << dir
                                            << "` compares the ranks'");
  return path;
}

void install_flight_dump_signal() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (env_string("PLEXUS_TRACE_SIGNAL") != "1" || ::pipe(g_signal_pipe) != 0) return;
    std::thread([] {
      char c;
      while (::read(g_signal_pipe[0], &c, 1) == 1) flight_dump_to_dir("SIGUSR1");
    }).detach();
    struct sigaction sa {};
    sa.sa_handler = on_sigusr1;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, nullptr);
  });
}

}  // namespace plexus
