#include "algorithms/host_rounds.h"

#include "base/backoff.h"
#include "base/error.h"

namespace plexus {

HostRounds::HostRounds(OpContext& ctx)
    : ctx_(ctx), host_(*ctx.comm->shm()), n_(host_.local_size()), me_(host_.local_index()) {}

std::atomic<uint64_t>& HostRounds::counter(int local, Counter c) const {
  SegmentHeader& h = host_.header(local);
  return c == kArrived ? h.arrived : c == kReduced ? h.reduced : h.done;
}

void HostRounds::wait_all(Counter c, uint64_t target, int only) {
  for (int p = 0; p < n_; ++p) {
    if (p == me_ || (only >= 0 && p != only)) continue;
    std::atomic<uint64_t>& v = counter(p, c);
    Backoff backoff;
    while (v.load(std::memory_order_acquire) < target) {
      backoff.pause();
      if (!backoff.time_to_check()) continue;
      host_.check_peer(p);
      ctx_.comm->check_abort();
      if (ctx_.deadline.passed())
        throw Timeout("timed out after " + std::to_string(static_cast<int>(ctx_.comm->timeout_s())) +
                      " s waiting for " + host_.name_of(p) +
                      " in shared memory (a peer may be stuck, dead, or in a different call)");
    }
  }
}

char* HostRounds::begin() {
  round_ = counter(me_, kDone).load(std::memory_order_relaxed);
  parity_ = static_cast<int>(round_ & 1);
  if (round_ >= 1) wait_all(kDone, round_ - 1);
  return staging(me_);
}

void HostRounds::publish_input() {
  OpStamp& st = host_.header(me_).stamp[parity_];
  st.sig = ctx_.sig;
  st.round.store(round_, std::memory_order_relaxed);
  st.seq.store(ctx_.seq, std::memory_order_relaxed);
  counter(me_, kArrived).store(round_ + 1, std::memory_order_release);
}

void HostRounds::check_stamp(int local) {
  const OpStamp& st = host_.header(local).stamp[parity_];
  const uint64_t seq = st.seq.load(std::memory_order_relaxed);
  if (seq != ctx_.seq || st.sig != ctx_.sig || st.round.load(std::memory_order_relaxed) != round_)
    throw Error("collective mismatch: " + host_.name_of(me_) + " called " + ctx_.sig.describe() +
                " as op #" + std::to_string(ctx_.seq) + " but " + host_.name_of(local) + " called " +
                st.sig.describe() + " as op #" + std::to_string(seq));
}

void HostRounds::wait_input(int local) {
  wait_all(kArrived, round_ + 1, local);
  for (int p = 0; p < n_; ++p)
    if (p != me_ && (local < 0 || p == local)) check_stamp(p);
}

void HostRounds::publish_result() { counter(me_, kReduced).store(round_ + 1, std::memory_order_release); }

void HostRounds::wait_result() { wait_all(kReduced, round_ + 1); }

void HostRounds::finish() { counter(me_, kDone).store(round_ + 1, std::memory_order_release); }

}  // namespace plexus
