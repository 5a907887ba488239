// Rank-prefixed logging on stderr, in the spirit of NCCL_DEBUG: PLEXUS_DEBUG=WARN|INFO|TRACE.
#pragma once

#include <sstream>
#include <string>

namespace plexus {

enum class LogLevel { kNone = 0, kWarn = 1, kInfo = 2, kTrace = 3 };

LogLevel log_level();
// The rank printed in front of lines logged by this process (the world rank, once known).
void set_log_rank(int rank);
int log_rank();  // -1 until set
void log_line(LogLevel level, const std::string& text);

}  // namespace plexus

#define PLEXUS_LOG(level, expr)                                         \
  do {                                                                  \
    if (::plexus::log_level() >= (level)) {                             \
      std::ostringstream plexus_log_os_;                                \
      plexus_log_os_ << expr;                                           \
      ::plexus::log_line((level), plexus_log_os_.str());                \
    }                                                                   \
  } while (0)
#define PLEXUS_WARN(expr) PLEXUS_LOG(::plexus::LogLevel::kWarn, expr)
#define PLEXUS_INFO(expr) PLEXUS_LOG(::plexus::LogLevel::kInfo, expr)
#define PLEXUS_TRACE(expr) PLEXUS_LOG(::plexus::LogLevel::kTrace, expr)
