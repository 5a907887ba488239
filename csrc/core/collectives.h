// Entry points of the collectives: check the call, pick the algorithm, queue it.
#pragma once

#include <memory>

#include "algorithms/algorithm.h"
#include "algorithms/port_flat.h"
#include "core/communicator.h"
#include "core/work.h"

namespace plexus {

// Throws InvalidArgument / TypeMismatch when the call cannot be right on this rank.
// `blocking`: the caller waits for the result right away (allows running it on this thread).
std::shared_ptr<Work> submit_collective(Communicator& comm, CollKind kind, CollArgs args,
                                        bool blocking);

// The same call on arrays in `place` (device memory, usually) for a group whose every pair's
// message port moves that memory: algorithms/port_flat, whatever the tuner would pick for host
// memory. Queued in order with the group's other collectives.
std::shared_ptr<Work> submit_port_collective(Communicator& comm, CollKind kind, CollArgs args, const PortPlace& place,
                                             bool blocking);

}  // namespace plexus
