// PLEXUS_TRANSPORTS, and the choice of a transport per peer.
#include "transport/transport_set.h"

#include "base/config.h"
#include "base/error.h"
#include "transport/host_memory.h"

namespace plexus {

namespace {

std::string table_names(const char* separator) {
  std::string names;
  for (const auto& t : transport_table()) names += (names.empty() ? "" : separator) + std::string(t.name);
  return names;
}

// PLEXUS_TRANSPORTS: a comma-separated subset of the table's names. Returns them in the table's
// order (the order of preference), or nothing and what is wrong in `problem`.
std::vector<const TransportInfo*> allowed_transports(const std::string& setting, std::string* problem) {
  std::vector<bool> allowed(transport_table().size(), false);
  size_t start = 0;
  while (start <= setting.size()) {
    size_t comma = setting.find(',', start);
    std::string t = setting.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    bool known = t.empty();
    for (size_t i = 0; i < transport_table().size(); ++i)
      if (t == transport_table()[i].name) allowed[i] = known = true;
    if (!known) {
      *problem = "PLEXUS_TRANSPORTS=" + setting + ": unknown transport '" + t + "' (known: " + table_names(", ") + ")";
      return {};
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  std::vector<const TransportInfo*> out;
  for (size_t i = 0; i < allowed.size(); ++i)
    if (allowed[i]) out.push_back(&transport_table()[i]);
  if (out.empty()) *problem = "PLEXUS_TRANSPORTS=" + setting + " allows no transport";
  return out;
}

}  // namespace

TransportSet::TransportSet(const TransportSetup& setup)
    : setting_(env_string("PLEXUS_TRANSPORTS", table_names(","))) {
  // A bad setting is reported by start(), after the endpoint exchange: by then every rank is
  // done with the store's early keys, so no rank leaves (rank 0 may host the store) while
  // another still waits there, and all report the same error.
  for (const TransportInfo* info : allowed_transports(setting_, &setting_error_))
    opened_.push_back({info, info->open(setup)});
}

std::vector<int> TransportSet::dial_fds(int channel) const {
  std::vector<int> fds;
  for (const auto& o : opened_) o.transport->dial_fds(channel, fds);
  return fds;
}

std::map<std::string, std::string> TransportSet::addresses() const {
  std::map<std::string, std::string> out;
  for (const auto& o : opened_) out[o.info->name] = o.transport->address();
  return out;
}

void TransportSet::start(const TransportSetup& setup, const std::vector<Endpoint>& endpoints) {
  if (!setting_error_.empty()) throw InvalidArgument(setting_error_);
  const int me = setup.id.rank, n = static_cast<int>(endpoints.size());
  for (const auto& o : opened_) {
    std::vector<PeerEndpoint> peers(endpoints.size());
    for (int p = 0; p < n; ++p) {
      auto it = endpoints[p].addresses.find(o.info->name);
      peers[p] = {endpoints[p].host_id, it != endpoints[p].addresses.end(),
                  it != endpoints[p].addresses.end() ? it->second : std::string()};
    }
    o.transport->start(setup, peers);
    bool everyone = true;
    for (const auto& p : peers) everyone = everyone && p.uses;
    fabric_possible_ = fabric_possible_ || (o.transport->fabric() && everyone);
  }
  choice_.assign(n, -1);
  int unreachable = -1;  // a peer no transport reaches; one on another host first
  for (int p = 0; p < n; ++p) {
    for (size_t i = 0; i < opened_.size() && choice_[p] < 0; ++i)
      if (opened_[i].transport->can_connect(p)) choice_[p] = static_cast<int>(i);
    if (choice_[p] >= 0 || p == me) continue;
    if (unreachable < 0 || (endpoints[p].host_id != endpoints[me].host_id &&
                            endpoints[unreachable].host_id == endpoints[me].host_id))
      unreachable = p;
  }
  if (unreachable < 0) return;
  std::string why;
  for (const auto& o : opened_) why += (why.empty() ? "" : "; ") + o.transport->why_not(unreachable);
  const std::string message = "PLEXUS_TRANSPORTS=" + setting_ + ", but " + why;
  if (endpoints[unreachable].host_id != endpoints[me].host_id) throw InvalidArgument(message);
  throw Error(message);
}

const char* TransportSet::name_to(int rank) const {
  return choice_[rank] < 0 ? "" : opened_[choice_[rank]].info->name;
}

std::unique_ptr<Connection> TransportSet::accept_one(int channel) {
  for (const auto& o : opened_)
    if (auto conn = o.transport->accept_one(channel)) return conn;
  return nullptr;
}

int TransportSet::port(int channel) const {
  for (const auto& o : opened_)
    if (int p = o.transport->port(channel)) return p;
  return 0;
}

HostMemory* TransportSet::host_memory() const {
  for (const auto& o : opened_)
    if (HostMemory* m = o.transport->host_memory()) return m;
  return nullptr;
}

void TransportSet::announce_failure(const std::string& why) {
  for (const auto& o : opened_) o.transport->announce_failure(why);
}

}  // namespace plexus
