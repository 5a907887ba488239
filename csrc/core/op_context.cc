// OpContext's answers, from the communicator running the op.
#include "core/op_context.h"

#include "algorithms/algorithm.h"
#include "base/error.h"
#include "core/collectives.h"
#include "core/communicator.h"

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

}  // namespace plexus
