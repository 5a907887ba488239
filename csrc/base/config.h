// Settings read from PLEXUS_* environment variables.
#pragma once

#include <cstddef>
#include <string>

namespace plexus {

std::string env_string(const char* name, const std::string& fallback = "");
// Accepts plain bytes or K/M/G suffixes (powers of 1024); throws InvalidArgument on junk.
size_t env_bytes(const char* name, size_t fallback);
double env_seconds(const char* name, double fallback);

// Bytes per pipelined chunk on the wire (PLEXUS_CHUNK_BYTES).
size_t chunk_bytes();

}  // namespace plexus
