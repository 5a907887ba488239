#include "tuner/tuner.h"

#include "core/error.h"

namespace plexus {

const Algorithm& choose_algorithm(CollKind kind, size_t /*bytes*/, int /*nranks*/) {
  for (const auto& a : algorithm_table())
    if (a.kind == kind) return a;
  throw Error(std::string("no algorithm registered for ") + coll_name(kind));
}

}  // namespace plexus
