// HostRounds: the counters and stamps of each round, read and written in the host memory.
#include "algorithms/host_rounds.h"

#include "base/backoff.h"
#include "base/error.h"
#include "base/fault.h"

namespace plexus {

HostRounds::HostRounds(OpContext& ctx)
    : ctx_(ctx), host_(*ctx.host_memory()), n_(host_.local_size()), me_(host_.local_index()) {}

void HostRounds::wait_all(RoundCounter c, uint64_t target, int only) {
  for (int p = 0; p < n_; ++p) {
    if (p == me_ || (only >= 0 && p != only)) continue;
    std::atomic<uint64_t>& v = host_.counter(p, c);
    Backoff backoff;
    while (v.load(std::memory_order_acquire) < target) {
      backoff.pause();
      if (!backoff.time_to_check()) continue;
      // Every local peer, not just the awaited one: one that failed or aborted dooms the call,
      // and the error should name it, not whoever comes late next.
      for (int q = 0; q < n_; ++q)
        if (q != me_) check_peer(q);
      ctx_.check_abort();
      if (ctx_.deadline.passed())
        throw Timeout("timed out after " + std::to_string(static_cast<int>(ctx_.timeout_s())) +
                      " s waiting for " + host_.name_of(p) +
                      " in shared memory (a peer may be stuck, dead, or in a different call)");
    }
  }
}

void HostRounds::check_peer(int q) {
  try {
    host_.check_peer(q);
  } catch (const PeerError&) {
    // A peer that finished this call and then left (destroyed its group, exited) is no error
    // for it: it marked its leaving after its last counter, so that counter is visible now.
    if (host_.counter(q, RoundCounter::kDone).load(std::memory_order_acquire) >= round_ + 1) return;
    throw;
  }
}

char* HostRounds::begin() {
  round_ = host_.counter(me_, RoundCounter::kDone).load(std::memory_order_relaxed);
  parity_ = static_cast<int>(round_ & 1);
  if (round_ >= 1) wait_all(RoundCounter::kDone, round_ - 1);
  return staging(me_);
}

void HostRounds::publish_input() {
  OpStamp& st = host_.stamp(me_, parity_);
  st.sig = ctx_.sig;
  st.round.store(round_, std::memory_order_relaxed);
  st.seq.store(ctx_.seq, std::memory_order_relaxed);
  host_.counter(me_, RoundCounter::kArrived).store(round_ + 1, std::memory_order_release);
  fault_point("shm_round");  // our input is published, the others may be reading it
}

void HostRounds::check_stamp(int local) {
  const OpStamp& st = host_.stamp(local, parity_);
  const uint64_t seq = st.seq.load(std::memory_order_relaxed);
  if (seq != ctx_.seq || st.sig != ctx_.sig || st.round.load(std::memory_order_relaxed) != round_)
    throw Error(collective_mismatch(host_.name_of(me_), ctx_.sig, ctx_.seq, host_.name_of(local), st.sig, seq));
}

void HostRounds::wait_input(int local) {
  wait_all(RoundCounter::kArrived, round_ + 1, local);
  for (int p = 0; p < n_; ++p)
    if (p != me_ && (local < 0 || p == local)) check_stamp(p);
}

void HostRounds::publish_result() { host_.counter(me_, RoundCounter::kReduced).store(round_ + 1, std::memory_order_release); }

void HostRounds::wait_result() { wait_all(RoundCounter::kReduced, round_ + 1); }

void HostRounds::finish() { host_.counter(me_, RoundCounter::kDone).store(round_ + 1, std::memory_order_release); }

void HostRounds::wait_finished() { wait_all(RoundCounter::kDone, round_ + 1); }

}  // namespace plexus
