// Wire format (both directions little-endian, as the hosts are):
//   request:  u8 cmd | u32 key_len | key | u64 value_len | value
//   response: u8 status (0 ok, 1 not found before the wait ran out) | u64 len | value
// GET carries its wait in milliseconds as an i64 value; ADD carries the i64 delta.
// With a job token (auth.h) a connection starts with a challenge-response before any request:
//   server: u32 "PLXS" | nonce_s          client: u32 "PLXK" | nonce_c | proof_c
//   server: proof_s                      (proof_x = HMAC(token, role | nonces), auth.h)
// A client that fails it is logged (its address) and closed; the store goes on.
#include "bootstrap/tcp_store.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <vector>

#include "base/error.h"
#include "base/log.h"
#include "bootstrap/auth.h"

namespace plexus {

namespace {

enum : uint8_t { kSet = 1, kGet = 2, kAdd = 3 };
enum : uint8_t { kOk = 0, kNotFound = 1 };
constexpr uint32_t kMaxKey = 1 << 16;
constexpr uint64_t kMaxValue = 64ull << 20;
constexpr uint32_t kServerHello = 0x504C5853;  // "PLXS"
constexpr uint32_t kClientProof = 0x504C584B;  // "PLXK"
constexpr const char* kStoreContext = "plexus store";
constexpr const char* kClientRole = "store client";  // the roles of the proofs (auth.h)
constexpr const char* kServerRole = "store server";
constexpr size_t kClientProofBytes = 4 + 32 + 32;
constexpr int kAuthMillis = 5000;            // for a client to prove it holds the token
constexpr size_t kMaxUnauthenticated = 64;   // clients waiting to do so

void put_u32(std::string& s, uint32_t v) { s.append(reinterpret_cast<const char*>(&v), 4); }
void put_u64(std::string& s, uint64_t v) { s.append(reinterpret_cast<const char*>(&v), 8); }

std::string encode_i64(int64_t v) { return std::string(reinterpret_cast<const char*>(&v), 8); }
int64_t decode_i64(const std::string& s) {
  int64_t v = 0;
  std::memcpy(&v, s.data(), s.size() < 8 ? s.size() : 8);
  return v;
}

std::string response(uint8_t status, const std::string& value) {
  std::string out(1, static_cast<char>(status));
  put_u64(out, value.size());
  out += value;
  return out;
}

struct ClientState {
  Fd fd;
  std::string who;       // its address, for messages
  bool authed = false;   // always true in a job without a token
  Nonce nonce{};         // the server's nonce of its handshake
  Clock::time_point auth_until;  // when it is dropped if it has not authenticated by then
  std::string inbuf;
  bool waiting = false;  // a GET is parked until its key appears
  std::string wait_key;
  Clock::time_point wait_until;
};

}  // namespace

TcpStoreServer::TcpStoreServer(const std::string& bind_ip, int port) : token_(job_token()) {
  if (!token_.empty()) hmac_sha256(token_, "");  // no libcrypto: say so here, not on the server's thread
  listen_fd_ = listen_tcp(bind_ip, port, &port_);
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) throw Error("pipe(): " + errno_text(errno));
  wake_read_ = Fd(pipefd[0]);
  wake_write_ = Fd(pipefd[1]);
  thread_ = std::thread([this] { serve(); });
  PLEXUS_INFO("store server listening on " << bind_ip << ":" << port_);
}

TcpStoreServer::~TcpStoreServer() {
  if (made_before_fork(generation_)) {  // a forked child: the serving thread is the parent's
    new std::thread(std::move(thread_));
    return;
  }
  char c = 'q';
  (void)!::write(wake_write_.get(), &c, 1);
  if (thread_.joinable()) thread_.join();
}

void TcpStoreServer::serve() {
  std::map<std::string, std::string> data;
  std::vector<std::unique_ptr<ClientState>> clients;

  auto reply = [](ClientState& c, const std::string& bytes) {
    try {
      send_all(c.fd.get(), bytes.data(), bytes.size(), Deadline::after_seconds(10));
    } catch (const Error& e) {
      PLEXUS_WARN("store: dropping a client: " << e.what());
      c.fd.reset();
    }
  };
  auto wake_waiters = [&](const std::string& key) {
    for (auto& c : clients) {
      if (c->waiting && c->wait_key == key && c->fd.valid()) {
        c->waiting = false;
        reply(*c, response(kOk, data[key]));
      }
    }
  };
  auto refuse = [](ClientState& c, const char* why) {
    PLEXUS_WARN("store: refused a client from " << c.who << ": " << why);
    c.fd.reset();
  };
  // With a token: checks the client's proof, answers with ours; false until it is all in.
  auto authenticate = [&](ClientState& c) {
    if (c.inbuf.size() < 4) return false;
    uint32_t magic;
    std::memcpy(&magic, c.inbuf.data(), 4);
    if (magic != kClientProof) {
      refuse(c, "no authentication (is PLEXUS_AUTH_TOKEN unset there?)");
      return false;
    }
    if (c.inbuf.size() < kClientProofBytes) return false;
    Nonce theirs;
    std::memcpy(theirs.data(), c.inbuf.data() + 4, theirs.size());
    Mac expected = handshake_proof(token_, kClientRole, kStoreContext, c.nonce, theirs);
    if (!same_bytes(expected.data(), reinterpret_cast<const uint8_t*>(c.inbuf.data()) + 36, expected.size())) {
      refuse(c, "it does not hold this job's token");
      return false;
    }
    c.inbuf.erase(0, kClientProofBytes);
    Mac ours = handshake_proof(token_, kServerRole, kStoreContext, theirs, c.nonce);
    reply(c, std::string(reinterpret_cast<const char*>(ours.data()), ours.size()));
    c.authed = c.fd.valid();
    return c.authed;
  };
  // Parses and answers every complete request in the client's buffer.
  auto handle = [&](ClientState& c) {
    try {
      if (!c.authed && !authenticate(c)) return;
    } catch (const std::exception& e) {  // libcrypto or getrandom failed: this client goes, the store stays
      refuse(c, e.what());
      return;
    }
    while (!c.waiting && c.fd.valid()) {
      const std::string& b = c.inbuf;
      if (b.size() < 5) return;
      uint32_t klen;
      std::memcpy(&klen, b.data() + 1, 4);
      if (klen > kMaxKey) { c.fd.reset(); return; }
      if (b.size() < 5 + klen + 8) return;
      uint64_t vlen;
      std::memcpy(&vlen, b.data() + 5 + klen, 8);
      if (vlen > kMaxValue) { c.fd.reset(); return; }
      size_t total = 5 + klen + 8 + vlen;
      if (b.size() < total) return;
      uint8_t cmd = static_cast<uint8_t>(b[0]);
      std::string key = b.substr(5, klen);
      std::string value = b.substr(5 + klen + 8, vlen);
      c.inbuf.erase(0, total);
      if (cmd == kSet) {
        data[key] = value;
        reply(c, response(kOk, ""));
        wake_waiters(key);
      } else if (cmd == kAdd) {
        int64_t v = decode_i64(data.count(key) ? data[key] : encode_i64(0)) + decode_i64(value);
        data[key] = encode_i64(v);
        reply(c, response(kOk, data[key]));
        wake_waiters(key);
      } else if (cmd == kGet) {
        auto it = data.find(key);
        if (it != data.end()) {
          reply(c, response(kOk, it->second));
        } else {
          c.waiting = true;
          c.wait_key = key;
          // Bounded: a huge or negative wait from a broken client must not overflow the clock.
          const int64_t wait_ms = std::min<int64_t>(std::max<int64_t>(decode_i64(value), 0), 24 * 3600 * 1000);
          c.wait_until = Clock::now() + std::chrono::milliseconds(wait_ms);
        }
      } else {
        c.fd.reset();  // not a store client
      }
    }
  };

  while (true) {
    // Expire parked GETs whose wait ran out.
    auto now = Clock::now();
    int timeout_ms = 1000;
    for (auto& c : clients) {
      if (!c->authed && c->fd.valid() && c->auth_until <= now) refuse(*c, "no valid handshake in time");
      if (!c->waiting) continue;
      if (c->wait_until <= now) {
        c->waiting = false;
        reply(*c, response(kNotFound, ""));
        handle(*c);
      } else {
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(c->wait_until - now).count();
        if (ms + 1 < timeout_ms) timeout_ms = static_cast<int>(ms) + 1;
      }
    }
    clients.erase(std::remove_if(clients.begin(), clients.end(),
                                 [](const std::unique_ptr<ClientState>& c) { return !c->fd.valid(); }),
                  clients.end());

    std::vector<pollfd> fds;
    fds.push_back({wake_read_.get(), POLLIN, 0});
    fds.push_back({listen_fd_.get(), POLLIN, 0});
    for (auto& c : clients) fds.push_back({c->fd.get(), POLLIN, 0});
    int n = ::poll(fds.data(), fds.size(), timeout_ms);
    if (n < 0 && errno != EINTR) {
      PLEXUS_WARN("store: poll failed: " << errno_text(errno));
      return;
    }
    if (n <= 0) continue;
    if (fds[0].revents) return;  // shutting down
    if (fds[1].revents & POLLIN) {
      while (true) {
        Fd fd = accept_tcp(listen_fd_.get());
        if (!fd.valid()) break;
        auto c = std::make_unique<ClientState>();
        c->fd = std::move(fd);
        c->who = peer_ip(c->fd.get());
        c->authed = token_.empty();
        if (!c->authed) {
          // 36 bytes into an empty socket buffer: sent at once, or the client is gone.
          try {
            c->nonce = fresh_nonce();
          } catch (const std::exception& e) {
            PLEXUS_WARN("store: refused a client from " << c->who << ": " << e.what());
            continue;
          }
          std::string hello(reinterpret_cast<const char*>(&kServerHello), 4);
          hello.append(reinterpret_cast<const char*>(c->nonce.data()), c->nonce.size());
          if (::send(c->fd.get(), hello.data(), hello.size(), MSG_NOSIGNAL | MSG_DONTWAIT) !=
              static_cast<ssize_t>(hello.size()))
            continue;
          c->auth_until = Clock::now() + std::chrono::milliseconds(kAuthMillis);
          // Too many strangers at once: the oldest goes first (the store's own ranks finish
          // their handshakes within milliseconds).
          auto waiting = [](const std::unique_ptr<ClientState>& x) { return !x->authed && x->fd.valid(); };
          if (std::count_if(clients.begin(), clients.end(), waiting) >= static_cast<long>(kMaxUnauthenticated))
            refuse(**std::find_if(clients.begin(), clients.end(), waiting), "too many clients wait to authenticate");
        }
        clients.push_back(std::move(c));
      }
    }
    for (size_t i = 2; i < fds.size(); ++i) {
      if (!fds[i].revents) continue;
      ClientState& c = *clients[i - 2];
      char buf[65536];
      ssize_t k = ::recv(c.fd.get(), buf, sizeof(buf), MSG_DONTWAIT);
      if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR)) {
        c.fd.reset();
        continue;
      }
      if (k > 0) {
        c.inbuf.append(buf, static_cast<size_t>(k));
        handle(c);
      }
    }
  }
}

TcpStoreClient::TcpStoreClient(const std::string& host, int port, double timeout_s)
    : host_(host), port_(port), timeout_s_(timeout_s) {
  try {
    fd_ = connect_tcp_retry(host, port, Deadline::after_seconds(timeout_s));
  } catch (const Error& e) {
    throw Error("cannot reach the rendezvous store at " + host + ":" + std::to_string(port) +
                " within " + std::to_string(static_cast<int>(timeout_s)) + " s: " + e.what());
  }
  local_ip_ = local_ip(fd_.get());
  const std::string token = job_token();
  if (!token.empty()) authenticate(token);
}

void TcpStoreClient::authenticate(const std::string& token) {
  // The server speaks first, at once: wait briefly, not the whole rendezvous timeout.
  Deadline deadline = Deadline::after_seconds(std::min(timeout_s_, 10.0));
  try {
    uint32_t magic = 0;
    Nonce theirs;
    recv_all(fd_.get(), &magic, 4, deadline);
    if (magic != kServerHello) throw Error("it is not a plexus store that authenticates");
    recv_all(fd_.get(), theirs.data(), theirs.size(), deadline);
    Nonce mine = fresh_nonce();
    Mac proof = handshake_proof(token, kClientRole, kStoreContext, theirs, mine);
    std::string msg(reinterpret_cast<const char*>(&kClientProof), 4);
    msg.append(reinterpret_cast<const char*>(mine.data()), mine.size());
    msg.append(reinterpret_cast<const char*>(proof.data()), proof.size());
    send_all(fd_.get(), msg.data(), msg.size(), deadline);
    Mac answer;
    try {
      recv_all(fd_.get(), answer.data(), answer.size(), deadline);
    } catch (const Timeout&) {
      throw Error("it did not answer this rank's proof in time");
    } catch (const Error&) {
      throw Error("it refused this rank's proof (PLEXUS_AUTH_TOKEN differs there, or the store dropped "
                  "this connection: see rank 0's log)");
    }
    Mac expected = handshake_proof(token, kServerRole, kStoreContext, mine, theirs);
    if (!same_bytes(expected.data(), answer.data(), answer.size()))
      throw Error("it does not hold this job's token (PLEXUS_AUTH_TOKEN differs there)");
  } catch (const Timeout&) {
    fd_.reset();
    throw Error("the rendezvous store at " + server() + " did not start an authenticated handshake " +
                "(PLEXUS_AUTH_TOKEN is set here: is it set on rank 0 too?)");
  } catch (const Error& e) {
    fd_.reset();
    throw Error("cannot authenticate with the rendezvous store at " + server() + ": " + e.what());
  }
}

std::string TcpStoreClient::request(uint8_t cmd, const std::string& key, const std::string& value,
                                    Deadline deadline, bool* found) {
  if (made_before_fork(generation_))  // its socket is the parent's (and a parent thread may hold mu_)
    throw Error("the rendezvous store connection to " + server() + " was made before a fork and this is the "
                "forked child (pid " + std::to_string(getpid()) + "): make a new process group (and store) in the child");
  std::lock_guard<std::mutex> lock(mu_);
  if (!fd_.valid()) throw Error("the rendezvous store connection to " + server() + " is closed");
  std::string msg(1, static_cast<char>(cmd));
  put_u32(msg, static_cast<uint32_t>(key.size()));
  msg += key;
  put_u64(msg, value.size());
  msg += value;
  try {
    send_all(fd_.get(), msg.data(), msg.size(), deadline);
    uint8_t status;
    uint64_t len;
    // The server answers a GET when its own wait ends; allow it a little longer here.
    Deadline reply_deadline{deadline.at + std::chrono::seconds(5)};
    recv_all(fd_.get(), &status, 1, reply_deadline);
    if (status != kOk && status != kNotFound)
      throw Error("its answer is not a store reply (does rank 0 use PLEXUS_AUTH_TOKEN and this rank not?)");
    recv_all(fd_.get(), &len, 8, reply_deadline);
    if (len > kMaxValue) throw Error("its answer claims " + std::to_string(len) + " bytes");
    std::string out(len, '\0');
    if (len) recv_all(fd_.get(), out.data(), len, reply_deadline);
    *found = status == kOk;
    return out;
  } catch (const Error& e) {
    fd_.reset();  // the stream is out of step now
    throw Error("rendezvous store at " + server() + " failed: " + e.what());
  }
}

void TcpStoreClient::set(const std::string& key, const std::string& value) {
  bool found;
  request(kSet, key, value, Deadline::after_seconds(timeout_s_), &found);
}

std::string TcpStoreClient::get(const std::string& key, Deadline deadline) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline.at - Clock::now()).count();
  bool found = false;
  std::string v = request(kGet, key, encode_i64(ms < 0 ? 0 : ms), deadline, &found);
  if (!found) throw Timeout("timed out waiting for key '" + key + "' in the rendezvous store at " + server());
  return v;
}

int64_t TcpStoreClient::add(const std::string& key, int64_t delta) {
  bool found;
  return decode_i64(request(kAdd, key, encode_i64(delta), Deadline::after_seconds(timeout_s_), &found));
}

}  // namespace plexus
