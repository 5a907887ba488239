// The log level (PLEXUS_DEBUG), rank-prefixed lines on stderr, and errno in words.
#include "base/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "base/error.h"

namespace plexus {

namespace {
std::atomic<int> g_rank{-1};

LogLevel parse_level() {
  const char* v = std::getenv("PLEXUS_DEBUG");
  if (!v || !*v) return LogLevel::kWarn;
  std::string s(v);
  for (auto& c : s) c = static_cast<char>(toupper(c));
  if (s == "TRACE") return LogLevel::kTrace;
  if (s == "INFO") return LogLevel::kInfo;
  if (s == "WARN") return LogLevel::kWarn;
  if (s == "NONE" || s == "OFF") return LogLevel::kNone;
  std::fprintf(stderr, "[plexus] WARN unknown PLEXUS_DEBUG=%s (use WARN, INFO or TRACE)\n", v);
  return LogLevel::kWarn;
}
}  // namespace

LogLevel log_level() {
  static const LogLevel level = parse_level();
  return level;
}

void set_log_rank(int rank) { g_rank.store(rank); }
int log_rank() { return g_rank.load(); }

void log_line(LogLevel level, const std::string& text) {
  static std::mutex mu;
  const char* tag = level == LogLevel::kWarn ? "WARN" : level == LogLevel::kInfo ? "INFO" : "TRACE";
  std::lock_guard<std::mutex> lock(mu);
  std::fprintf(stderr, "[plexus %d:%d] %s %s\n", static_cast<int>(getpid()), g_rank.load(), tag,
               text.c_str());
  std::fflush(stderr);
}

std::string errno_text(int err) {
  char buf[256];
  // GNU strerror_r returns the message pointer.
  return std::string(strerror_r(err, buf, sizeof(buf)));
}

std::string message_of(const std::exception_ptr& ep) {
  try {
    std::rethrow_exception(ep);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown error";
  }
}

}  // namespace plexus
