// Helpers shared by the algorithms: block layout, chunking, and the reduction bookkeeping for
// AVG and PREMUL_SUM.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "algorithms/algorithm.h"
#include "base/copy.h"

namespace plexus {

inline int wrap_rank(int r, int n) { return ((r % n) + n) % n; }

// Splits `count` elements into `parts` blocks whose sizes differ by at most one.
struct BlockLayout {
  BlockLayout(size_t count, int parts) : count_(count), parts_(static_cast<size_t>(parts)) {}
  size_t offset(int b) const {
    size_t base = count_ / parts_, extra = count_ % parts_, ub = static_cast<size_t>(b);
    return ub * base + (ub < extra ? ub : extra);
  }
  size_t size(int b) const {
    return count_ / parts_ + (static_cast<size_t>(b) < count_ % parts_ ? 1 : 0);
  }

 private:
  size_t count_, parts_;
};

// Splits a run of `count` elements into pipelined chunks of at most chunk_bytes(); always at
// least one chunk, so that even empty buffers exchange a (checked) frame.
struct Chunks {
  Chunks(size_t count, size_t elem_size);
  size_t n = 1;      // number of chunks
  size_t elems = 0;  // elements per full chunk
  size_t offset(size_t k) const { return k * elems; }
  size_t size(size_t k, size_t count) const {
    size_t off = offset(k);
    return off >= count ? 0 : (count - off < elems ? count - off : elems);
  }
};

// How a reduction is carried out: the op the kernels apply, and the scale of the final result
// (1/N for AVG). PREMUL_SUM becomes SUM over pre-scaled inputs (see scaled_inputs).
struct Reduction {
  RedOp kernel_op;
  double post_scale;
};
Reduction plan_reduction(const CollArgs& args, int nranks);

// For PREMUL_SUM, copies of `inputs` multiplied by the factor (kept in `storage`); otherwise
// the inputs themselves.
std::vector<const void*> scaled_inputs(const CollArgs& args, size_t elems_per_input,
                                       std::vector<char>& storage);

// Working memory of one call (not zeroed), from a cache of this thread's that outlives the call:
// fresh pages of a large allocation cost a fault and a page the kernel zeroes, every call (a
// 64 MiB rhd all_reduce on 4 ranks spent about half its time there). Up to kCached bytes per
// thread stay cached; beyond that, or when every slot is taken, a call allocates its own.
class Scratch {
 public:
  static constexpr size_t kCached = 256u << 20;
  explicit Scratch(size_t bytes);
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  char* data() const { return data_; }

 private:
  char* data_ = nullptr;
  int slot_ = -1;
  std::unique_ptr<char[]> own_;
};

// The result of a collective on a single rank (no communication).
void single_rank_result(OpContext& ctx, const CollArgs& args);

bool overlaps(const void* a, size_t abytes, const void* b, size_t bbytes);

// Message-passing algorithms on one host send through shared-memory rings: a copy in, a copy
// out and the work, so about a third of the memory bandwidth, and framing and polling on every
// message on top of the synchronisation itself.
LinkCost stream_link(const GroupShape& g, const CostModel& m);
// Pipeline fill: the first chunk has to cross `hops` links before the rest streams behind it.
double pipeline_fill(double bytes, int hops, const LinkCost& l);

// Reduces several arrivals at once: each part calls arrive(); the last one runs the reduction.
// Reducing all sources in one kernel call, in a fixed order, makes the result independent of
// the order in which peers happen to deliver (and rounds float16/bfloat16 once).
struct Join {
  explicit Join(int parts) : left(parts) {}
  int left;
  bool arrive() { return --left == 0; }
};

}  // namespace plexus
