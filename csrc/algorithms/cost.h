// What an algorithm's cost function speaks: the alpha-beta model, where moving b bytes over a
// link takes alpha + b / beta, the links of a group and its shape. Each algorithm predicts its
// time from these; the tuner (tuner/cost_model.h) fills in the links and runs the cheapest
// (NCCL's src/graph/tuning.cc does the same with more link classes).
#pragma once

namespace plexus {

struct LinkCost {
  double alpha_s = 0;       // per message
  double bytes_per_s = 1e9;
  double time(double bytes) const { return alpha_s + bytes / bytes_per_s; }
};

struct CostModel {
  LinkCost shm{2e-6, 4e9};          // same host, shared memory
  LinkCost local_tcp{30e-6, 1e9};   // same host over TCP loopback (shared memory turned off)
  LinkCost network{30e-6, 1.25e9};  // between hosts (10 Gb/s unless told better)
  LinkCost ucx{3e-6, 12.5e9};       // between hosts through UCX on InfiniBand / RoCE (100 Gb/s unless told)
};

// What the cost of an algorithm depends on.
struct GroupShape {
  int ranks = 1;
  int hosts = 1;
  int local = 1;         // most ranks on one host
  bool uniform = true;   // every host has the same number of ranks
  bool shm = false;      // ranks of a host share memory
  bool cma = false;      // ... and can read each other's memory (process_vm_readv), every one
  bool ucx = false;      // hosts are joined by UCX (InfiniBand / RoCE), every pair of them
};

// The link that bounds an algorithm whose steps cross the whole group.
inline const LinkCost& bottleneck(const GroupShape& g, const CostModel& m) {
  if (g.hosts > 1) return g.ucx ? m.ucx : m.network;
  return g.shm ? m.shm : m.local_tcp;
}

inline int ceil_log2(int n) {
  int d = 0;
  while ((1 << d) < n) ++d;
  return d;
}

}  // namespace plexus
