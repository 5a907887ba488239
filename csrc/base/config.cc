// PLEXUS_* settings: strings, sizes with K/M/G suffixes, seconds.
#include "base/config.h"

#include <cstdlib>

#include "base/error.h"

namespace plexus {

std::string env_string(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return (v && *v) ? std::string(v) : fallback;
}

size_t env_bytes(const char* name, size_t fallback) {
  std::string v = env_string(name);
  if (v.empty()) return fallback;
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  std::string suffix(end);
  double mult = 1;
  if (suffix == "K" || suffix == "k" || suffix == "KiB") mult = 1024.0;
  else if (suffix == "M" || suffix == "m" || suffix == "MiB") mult = 1024.0 * 1024;
  else if (suffix == "G" || suffix == "g" || suffix == "GiB") mult = 1024.0 * 1024 * 1024;
  else if (!suffix.empty()) throw InvalidArgument(std::string(name) + "=" + v + " is not a size");
  if (end == v.c_str() || x < 0) throw InvalidArgument(std::string(name) + "=" + v + " is not a size");
  return static_cast<size_t>(x * mult);
}

double env_seconds(const char* name, double fallback) {
  std::string v = env_string(name);
  if (v.empty()) return fallback;
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (end == v.c_str() || *end != '\0' || !(x > 0))
    throw InvalidArgument(std::string(name) + "=" + v + " is not a positive number of seconds");
  return x;
}

size_t chunk_bytes() {
  static const size_t bytes = [] {
    size_t b = env_bytes("PLEXUS_CHUNK_BYTES", 512 * 1024);
    return b < 4096 ? size_t(4096) : b;
  }();
  return bytes;
}

}  // namespace plexus
