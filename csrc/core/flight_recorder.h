// The flight recorder: each communicator keeps its last N calls (PLEXUS_TRACE_BUFFER, default
// 2000): sequence number, signature, algorithm, state, and when it was submitted, started and
// ended (the coarse wall clock: a few ms of resolution, cheap enough for every call). Every recorder of the process is written as one JSON document when a call fails with a
// timeout or a peer error (into PLEXUS_TRACE_DIR, default $TMPDIR/plexus-trace), on SIGUSR1 when
// PLEXUS_TRACE_SIGNAL=1, and on demand (plexus.debug_dump). `plexus trace DIR` reads every
// rank's document and says which rank is behind and which calls disagree.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "base/signature.h"

namespace plexus {

class FlightRecorder {
 public:
  FlightRecorder(uint64_t comm_id, int rank, int size, std::vector<int> global_ranks);
  ~FlightRecorder();
  FlightRecorder(const FlightRecorder&) = delete;
  FlightRecorder& operator=(const FlightRecorder&) = delete;

  // `running`: it starts at once (a blocking call run on the caller's thread): no started().
  void submitted(uint64_t seq, const Signature& sig, const char* algorithm, bool running = false);
  void started(uint64_t seq);
  void ended(uint64_t seq, const std::string& error);  // "" when it succeeded

  // This recorder as a JSON object.
  std::string json() const;

 private:
  struct Entry {
    uint64_t seq = 0;  // 0: an empty slot
    Signature sig;
    const char* algorithm = "";
    const char* state = "";
    double submitted = 0, started = 0, ended = 0;  // seconds since the epoch (0: not yet)
    std::string error;
  };
  // The slot of call `seq` while the ring still holds it, else nullptr.
  Entry* find(uint64_t seq);

  const uint64_t comm_id_;
  const int rank_, size_;
  const std::vector<int> global_ranks_;
  mutable std::mutex mu_;
  std::vector<Entry> ring_;  // call seq in slot (seq - 1) % size: no allocation per call
  uint64_t last_ = 0;        // the newest seq recorded
};

// Every live recorder of this process, as one JSON document.
std::string flight_dump_json();
// Writes that document into PLEXUS_TRACE_DIR; returns the file's path ("" when it could not).
std::string flight_dump_to_dir(const std::string& why);
// With PLEXUS_TRACE_SIGNAL=1: SIGUSR1 writes the dump (from a thread of its own). Idempotent.
void install_flight_dump_signal();

}  // namespace plexus
