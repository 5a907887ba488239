// The values of the cost model (algorithms/cost.h) this process tunes with: defaults, or what
// plexus-bench --calibrate measured on this machine.
#pragma once

#include "algorithms/cost.h"

namespace plexus {

// Defaults, then PLEXUS_TUNER_FILE (a file) and PLEXUS_TUNER (the same lines, ';'-separated).
// Lines are "name = value" (alpha in microseconds, beta in GB/s), as written by plexus-bench
// --calibrate: shm_alpha_us, shm_gbps, tcp_alpha_us, tcp_gbps, net_alpha_us, net_gbps, ucx_alpha_us,
// ucx_gbps.
// Unknown names are errors; absent ones keep their defaults.
CostModel cost_model_from_env();

}  // namespace plexus
