// OpContext's answers, from the communicator running the op.
#include "core/op_context.h"

#include "algorithms/algorithm.h"
#include "base/error.h"
#include "core/collectives.h"
#include "core/communicator.h"
#include "core/direct_messages.h"

namespace plexus {

int OpContext::rank() const { return comm_.rank(); }
int OpContext::size() const { return comm_.size(); }
std::string OpContext::describe() const { return sig.describe() + " #" + std::to_string(seq); }
std::string OpContext::name_of(int r) const { return comm_.name_of(r); }
double OpContext::timeout_s() const { return comm_.timeout_s(); }
void OpContext::check_abort() const { comm_.check_abort(); }
HostMemory* OpContext::host_memory() const { return comm_.host_memory(); }

void OpContext::all_reduce_across_hosts(void* buf, size_t count, DType dtype, RedOp op) const {
  Communicator* cross = comm_.cross_hosts();
  if (!cross) throw Error("hierarchical all-reduce needs several hosts with equal numbers of ranks");
  CollArgs across;
  across.inputs = {buf};
  across.outputs = {buf};
  across.count = count;
  across.dtype = dtype;
  across.op = op;
  submit_collective(*cross, CollKind::kAllReduce, std::move(across), /*blocking=*/true)->wait(-1);
}

namespace {
bool timed_out(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const Timeout&) {
    return true;
  } catch (...) {
    return false;
  }
}
}  // namespace

void OpContext::port_exchange(const std::vector<PortBlock>& recvs, const std::vector<PortBlock>& sends,
                              MemoryKind memory) const {
  DirectMessages& direct = comm_.direct();
  std::vector<std::shared_ptr<Work>> works;
  works.reserve(recvs.size() + sends.size());
  // The first failure that is not a timeout wins (a mismatch or a dead peer says more); it cancels
  // what is still in flight, which would only wait out its deadline: the group is unusable now.
  std::exception_ptr failure, timeout;
  auto failed = [&](std::exception_ptr e) {
    if (timed_out(e)) {
      if (!timeout) timeout = e;
    } else if (!failure) {
      failure = e;
      direct.abort(describe() + " failed: " + message_of(e));
    }
  };
  try {
    for (const PortBlock& b : recvs)
      works.push_back(direct.collective_recv(b.peer, b.buf, b.bytes, sig, seq, deadline, memory));
    for (const PortBlock& b : sends)
      works.push_back(direct.collective_send(b.peer, b.buf, b.bytes, sig, seq, deadline, memory));
  } catch (...) {
    failed(std::current_exception());  // what was posted is still waited for: it uses the caller's memory
  }
  for (auto& w : works) {
    try {
      w->wait(-1);  // every message has the group's deadline, and abort fails it
    } catch (...) {
      failed(std::current_exception());
    }
  }
  if (failure) std::rethrow_exception(failure);
  if (timeout) std::rethrow_exception(timeout);
}

}  // namespace plexus
