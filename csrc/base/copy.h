// copy_bytes: memcpy for buffers that may be empty. An empty array's data pointer may be null,
// and memcpy's pointers must be valid even for 0 bytes (UBSan reports it; compilers may assume it).
#pragma once

#include <cstddef>
#include <cstring>

namespace plexus {

inline void copy_bytes(void* dst, const void* src, size_t n) {
  if (n) std::memcpy(dst, src, n);
}

}  // namespace plexus
