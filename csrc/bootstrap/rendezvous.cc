// Identity, endpoint exchange and barriers over the store; which host this is.
#include "bootstrap/rendezvous.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>

#include "base/config.h"
#include "base/error.h"
#include "base/fault.h"
#include "base/log.h"
#include "bootstrap/auth.h"

namespace plexus {

CommIdentity agree_identity(Store& store, int rank, int size, Deadline deadline) {
  int64_t claims = store.add("rank_claim/" + std::to_string(rank), 1);
  if (claims > 1)
    throw InvalidArgument("rank " + std::to_string(rank) +
                          " was claimed by more than one process in this rendezvous");
  CommIdentity id;
  id.rank = rank;
  id.size = size;
  id.token = job_token();
  if (!id.token.empty()) hmac_sha256(id.token, "");  // no libcrypto: say so now, not in a handshake
  // "comm id (8) | secret (32) | 'A' authenticated or '-' | size": a rank whose setting differs
  // from rank 0's is told so here, not by a refused handshake later.
  const char mode = id.token.empty() ? '-' : 'A';
  if (rank == 0) {
    random_bytes(&id.comm_id, sizeof(id.comm_id));
    // With a job token, peers prove they hold it instead: no secret goes into the store.
    if (id.token.empty()) random_bytes(id.secret.data(), id.secret.size());
    std::string blob(reinterpret_cast<const char*>(&id.comm_id), 8);
    blob.append(reinterpret_cast<const char*>(id.secret.data()), id.secret.size());
    blob += mode;
    blob += std::to_string(size);
    store.set("identity", blob);
    return id;
  }
  std::string blob;
  try {
    blob = store.get("identity", deadline);
  } catch (const Timeout&) {
    throw Timeout("rank " + std::to_string(rank) + " timed out waiting for rank 0 to join the rendezvous");
  }
  if (blob.size() < 8 + id.secret.size() + 2) throw Error("the rendezvous store holds a malformed identity");
  std::memcpy(&id.comm_id, blob.data(), 8);
  std::memcpy(id.secret.data(), blob.data() + 8, id.secret.size());
  const char mode0 = blob[8 + id.secret.size()];
  if (mode0 != mode)
    throw InvalidArgument(mode0 == 'A' ? "rank 0 uses a job token (PLEXUS_AUTH_TOKEN or PLEXUS_AUTH_FILE) and rank " +
                                             std::to_string(rank) + " has none: set the same token on every rank"
                                       : "rank " + std::to_string(rank) +
                                             " has a job token (PLEXUS_AUTH_TOKEN or PLEXUS_AUTH_FILE) and rank 0 "
                                             "has none: set the same token on every rank");
  int size0 = std::stoi(blob.substr(8 + id.secret.size() + 1));
  if (size0 != size)
    throw InvalidArgument("rank 0 started a group of " + std::to_string(size0) + " ranks but rank " +
                          std::to_string(rank) + " was told the world size is " + std::to_string(size));
  return id;
}

namespace {

// "<n>|name=address|...|host_id": the count first and the host id last, so that a host id
// (PLEXUS_HOST_ID is free text) may hold any character.
std::string encode_endpoint(const Endpoint& e) {
  std::string s = std::to_string(e.addresses.size());
  for (const auto& [name, address] : e.addresses) {
    if (name.find_first_of("|=") != std::string::npos || address.find('|') != std::string::npos)
      throw Error("internal: endpoint field '" + name + "=" + address + "' holds a separator");
    s += "|" + name + "=" + address;
  }
  return s + "|" + e.host_id;
}

Endpoint decode_endpoint(const std::string& v, int rank) {
  auto malformed = [&] { return Error("malformed endpoint of rank " + std::to_string(rank) + ": '" + v + "'"); };
  size_t at = v.find('|');
  char* end = nullptr;
  const long n = std::strtol(v.c_str(), &end, 10);
  if (at == std::string::npos || end != v.c_str() + at || n < 0) throw malformed();
  Endpoint e;
  for (long i = 0; i < n; ++i) {
    const size_t next = v.find('|', at + 1);
    const size_t eq = v.find('=', at + 1);
    if (next == std::string::npos || eq == std::string::npos || eq > next) throw malformed();
    e.addresses[v.substr(at + 1, eq - at - 1)] = v.substr(eq + 1, next - eq - 1);
    at = next;
  }
  e.host_id = v.substr(at + 1);
  return e;
}

}  // namespace

std::vector<Endpoint> exchange_endpoints(Store& store, int rank, int size, const Endpoint& mine,
                                         Deadline deadline) {
  fault_point("rendezvous");  // the identity is agreed, this rank's endpoint not published
  store.set("endpoint/" + std::to_string(rank), encode_endpoint(mine));
  std::vector<Endpoint> all(static_cast<size_t>(size));
  for (int p = 0; p < size; ++p) {
    std::string v;
    try {
      v = store.get("endpoint/" + std::to_string(p), deadline);
    } catch (const Timeout&) {
      throw Timeout("rank " + std::to_string(rank) + " timed out waiting for rank " +
                    std::to_string(p) + " to join the rendezvous");
    } catch (const Error& e) {
      // The store closed while we waited: its host gave up on the same rank a moment earlier.
      throw Timeout("rank " + std::to_string(rank) + ": rank " + std::to_string(p) +
                    " never joined the rendezvous (the store closed while this rank waited for it: " +
                    e.what() + ")");
    }
    all[p] = decode_endpoint(v, p);
  }
  return all;
}

void store_barrier(Store& store, const std::string& name, int rank, int size, Deadline deadline) {
  // Which ranks have not set `stage`'s key of theirs (asked only once the wait has run out).
  auto missing = [&](const std::string& stage) {
    std::string who;
    for (int r = 0; r < size; ++r) {
      try {
        store.get(stage + name + "/" + std::to_string(r), Deadline::after_seconds(0.1));
      } catch (const Error&) {
        who += (who.empty() ? "rank " : ", ") + std::to_string(r);
      }
    }
    return who.empty() ? std::string("a rank") : who;
  };
  auto wait_key = [&](const std::string& key, const std::string& stage, const char* what) {
    try {
      store.get(key, deadline);
    } catch (const Timeout&) {
      throw Timeout("timed out in the rendezvous barrier '" + name + "' of " + std::to_string(size) +
                    " ranks: " + missing(stage) + " " + what + " (dead, stuck, or not calling it)");
    } catch (const Error& e) {  // the store's host gave up first; who was missing is gone with it
      throw Timeout("the rendezvous barrier '" + name + "' of " + std::to_string(size) +
                    " ranks did not complete: the store closed while this rank waited (" + e.what() + ")");
    }
  };
  store.set("barrier_in/" + name + "/" + std::to_string(rank), "1");
  if (store.add("barrier/" + name, 1) == size) store.set("barrier_done/" + name, "1");
  wait_key("barrier_done/" + name, "barrier_in/", "never arrived");
  store.set("barrier_out/" + name + "/" + std::to_string(rank), "1");
  if (store.add("barrier_left/" + name, 1) == size) store.set("barrier_all_left/" + name, "1");
  if (rank == 0) wait_key("barrier_all_left/" + name, "barrier_out/", "never left");
}

std::string this_host_id() {
  // PLEXUS_HOST_ID groups ranks into "hosts" by hand (tests, or machines whose hostnames and
  // boot ids coincide).
  std::string forced = env_string("PLEXUS_HOST_ID");
  if (!forced.empty()) return "id:" + forced;
  char name[256] = {0};
  gethostname(name, sizeof(name) - 1);
  std::string boot;
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::getline(f, boot);
  // Ranks in different network namespaces (containers, network test beds) count as different
  // hosts even on one kernel: they talk over the network between them.
  struct stat st{};
  std::string netns = stat("/proc/self/ns/net", &st) == 0 ? std::to_string(st.st_ino) : "";
  return std::string(name) + "/" + boot + "/" + netns;
}

}  // namespace plexus
