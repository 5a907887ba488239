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

}  // namespace plexus
