// How a call is named in messages.
#include "base/signature.h"

namespace plexus {

std::string Signature::describe() const {
  if (kind == CollKind::kCount) return "point-to-point message";
  std::string s = std::string(coll_name(kind)) + "(";
  if (kind != CollKind::kBarrier) {
    s += "count=" + std::to_string(count) + ", dtype=" + dtype_name(dtype);
    if (op != RedOp::kNone) s += std::string(", op=") + op_name(op);
    if (root >= 0) s += ", root=" + std::to_string(root);
  }
  return s + ")";
}

std::string collective_mismatch(const std::string& me, const Signature& mine, uint64_t my_seq, const std::string& them,
                                const Signature& theirs, uint64_t their_seq) {
  return "collective mismatch: " + me + " called " + mine.describe() + " as op #" + std::to_string(my_seq) + " but " +
         them + " called " + theirs.describe() + " as op #" + std::to_string(their_seq);
}

}  // namespace plexus
