// PLEXUS_ALGO parsing, predictions, and the choice of an algorithm per call.
#include "tuner/tuner.h"

#include <cstdlib>

#include "base/config.h"
#include "base/error.h"

namespace plexus {

namespace {

CollKind parse_kind(const std::string& s, const std::string& spec);

}  // namespace

CollKind parse_collective(const std::string& name) { return parse_kind(name, name); }

namespace {

CollKind parse_kind(const std::string& s, const std::string& spec) {
  std::string k;
  for (char c : s)
    if (c != '_') k += static_cast<char>(tolower(c));
  if (k == "allreduce") return CollKind::kAllReduce;
  if (k == "allgather") return CollKind::kAllGather;
  if (k == "reducescatter") return CollKind::kReduceScatter;
  if (k == "broadcast" || k == "bcast") return CollKind::kBroadcast;
  if (k == "reduce") return CollKind::kReduce;
  if (k == "barrier") return CollKind::kBarrier;
  if (k == "gather") return CollKind::kGather;
  if (k == "scatter") return CollKind::kScatter;
  if (k == "alltoall" || k == "alltoallv") return CollKind::kAllToAll;
  throw InvalidArgument("PLEXUS_ALGO=" + spec + ": unknown collective '" + s + "'");
}

size_t parse_size(const std::string& s, const std::string& spec) {
  if (s == "inf") return SIZE_MAX;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  std::string unit(end);
  double mult = unit.empty() || unit == "B" ? 1
              : (unit == "K" || unit == "k") ? 1024.0
              : (unit == "M" || unit == "m") ? 1024.0 * 1024
              : (unit == "G" || unit == "g") ? 1024.0 * 1024 * 1024 : -1;
  if (end == s.c_str() || mult < 0 || v < 0)
    throw InvalidArgument("PLEXUS_ALGO=" + spec + ": '" + s + "' is not a size (like 64K or inf)");
  return static_cast<size_t>(v * mult);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t p = s.find(sep, start);
    out.push_back(s.substr(start, p == std::string::npos ? std::string::npos : p - start));
    if (p == std::string::npos) return out;
    start = p + 1;
  }
}

const std::vector<AlgoOverride>& overrides() {
  static const std::vector<AlgoOverride> parsed = parse_algo_overrides(env_string("PLEXUS_ALGO"));
  return parsed;
}

}  // namespace

std::vector<AlgoOverride> parse_algo_overrides(const std::string& spec) {
  std::vector<AlgoOverride> out;
  if (spec.empty()) return out;
  for (const std::string& entry : split(spec, '#')) {
    if (entry.empty()) continue;
    std::vector<std::string> parts = split(entry, ':');
    if (parts.size() < 2 || parts.size() > 3 || parts.back().empty() || parts.back()[0] != '@')
      throw InvalidArgument("PLEXUS_ALGO=" + spec + ": '" + entry +
                            "' should look like collective[:lo-hi]:@algorithm");
    AlgoOverride o;
    o.kind = parse_kind(parts[0], spec);
    if (parts.size() == 3) {
      std::vector<std::string> range = split(parts[1], '-');
      if (range.size() != 2)
        throw InvalidArgument("PLEXUS_ALGO=" + spec + ": range '" + parts[1] + "' should look like 0-64K");
      o.lo = parse_size(range[0], spec);
      o.hi = parse_size(range[1], spec);
    }
    o.name = parts.back().substr(1);
    find_algorithm(o.kind, o.name);  // unknown names fail here, listing the known ones
    out.push_back(o);
  }
  return out;
}

std::vector<Prediction> predict_all(CollKind kind, double bytes, const GroupShape& g, const CostModel& m) {
  std::vector<Prediction> out;
  for (const auto& a : algorithm_table())
    if (a.kind == kind) out.push_back({&a, a.cost(kind, bytes, g, m), a.can_run(g)});
  return out;
}

const Algorithm& cheapest(CollKind kind, double bytes, const GroupShape& g, const CostModel& m) {
  const Algorithm* best = nullptr;
  double best_s = 0;
  for (const auto& a : algorithm_table()) {  // no allocation: this runs on every call
    if (a.kind != kind || !a.can_run(g)) continue;
    const double s = a.cost(kind, bytes, g, m);
    if (!best || s < best_s) {
      best = &a;
      best_s = s;
    }
  }
  if (!best) throw Error(std::string("no algorithm can run ") + coll_name(kind) + " on this group");
  return *best;
}

const Algorithm& choose_algorithm(CollKind kind, size_t bytes, const GroupShape& g, const CostModel& m,
                                  bool internal, std::string* why) {
  for (const auto& o : overrides()) {
    if (internal || o.kind != kind || bytes < o.lo || bytes >= o.hi) continue;
    const Algorithm& a = find_algorithm(kind, o.name);
    if (!a.can_run(g))
      throw InvalidArgument("PLEXUS_ALGO asks for " + o.name + " for " + coll_name(kind) +
                            ", which cannot run on this group (" + a.summary + ")");
    if (why) *why = "forced by PLEXUS_ALGO";
    return a;
  }
  const Algorithm& a = cheapest(kind, static_cast<double>(bytes), g, m);
  if (why) *why = "lowest predicted time";
  return a;
}

}  // namespace plexus
