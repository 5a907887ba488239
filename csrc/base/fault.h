// Fault injection, for the tests that kill a rank at a named point of its life (tests/
// test_kill_matrix.py): arm_fault("shm_setup", 1) makes this process SIGKILL itself the first
// time it reaches fault_point("shm_setup"). Unarmed, a fault point costs one relaxed load.
#pragma once

#include <string>

namespace plexus {

// Kills this process at its `after`-th arrival at fault point `point` (after >= 1).
void arm_fault(const std::string& point, int after);
void fault_point(const char* point);

}  // namespace plexus
