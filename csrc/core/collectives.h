// Entry points of the collectives: check the call, pick the algorithm, queue it.
#pragma once

#include <memory>

#include "algorithms/algorithm.h"
#include "core/communicator.h"
#include "core/work.h"

namespace plexus {

// Throws InvalidArgument / TypeMismatch when the call cannot be right on this rank.
// `blocking`: the caller waits for the result right away (allows running it on this thread).
std::shared_ptr<Work> submit_collective(Communicator& comm, CollKind kind, CollArgs args,
                                        bool blocking);

}  // namespace plexus
