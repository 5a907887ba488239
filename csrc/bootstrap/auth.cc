// Job token, nonces and HMAC-SHA256 through a dlopen'd libcrypto (see auth.h).
#include "bootstrap/auth.h"

#include <dlfcn.h>
#include <errno.h>
#include <sys/random.h>

#include <fstream>
#include <mutex>

#include "base/config.h"
#include "base/error.h"

namespace plexus {

namespace {

// The two libcrypto entry points used; both exist in OpenSSL 1.1 and 3.x.
struct Crypto {
  using EvpSha256 = const void* (*)();
  using Hmac = unsigned char* (*)(const void* md, const void* key, int key_len, const unsigned char* data,
                                  size_t data_len, unsigned char* out, unsigned int* out_len);
  EvpSha256 sha256 = nullptr;
  Hmac hmac = nullptr;
  std::string error;
};

const Crypto& crypto() {
  static Crypto c;
  static std::once_flag once;
  std::call_once(once, [] {
    for (const char* name : {"libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so"}) {
      void* lib = ::dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (!lib) continue;
      c.sha256 = reinterpret_cast<Crypto::EvpSha256>(::dlsym(lib, "EVP_sha256"));
      c.hmac = reinterpret_cast<Crypto::Hmac>(::dlsym(lib, "HMAC"));
      if (c.sha256 && c.hmac) return;
    }
    c.error = "OpenSSL's libcrypto (libcrypto.so.3 or .so.1.1) could not be loaded; job authentication "
              "(PLEXUS_AUTH_TOKEN) needs it";
  });
  return c;
}

std::string trimmed(std::string s) {
  const char* space = " \t\r\n";
  size_t a = s.find_first_not_of(space);
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(space) - a + 1);
}

}  // namespace

std::string job_token() {
  // Trimmed, from the variable as from the file: a token copied with its newline still matches.
  std::string token = trimmed(env_string("PLEXUS_AUTH_TOKEN"));
  if (!token.empty()) return token;
  std::string path = env_string("PLEXUS_AUTH_FILE");
  if (path.empty()) return "";
  std::ifstream f(path);
  std::string line;
  if (!f || !std::getline(f, line))
    throw InvalidArgument("PLEXUS_AUTH_FILE=" + path + " cannot be read (it should hold the job token; " +
                          "`plexus token` prints a fresh one)");
  token = trimmed(line);
  if (token.empty()) throw InvalidArgument("PLEXUS_AUTH_FILE=" + path + " holds no token on its first line");
  return token;
}

void random_bytes(void* out, size_t n) {
  auto* p = static_cast<uint8_t*>(out);
  while (n > 0) {
    ssize_t k = getrandom(p, n, 0);
    if (k < 0) {
      if (errno == EINTR) continue;
      throw Error("getrandom failed: " + errno_text(errno));
    }
    p += k;
    n -= static_cast<size_t>(k);
  }
}

Nonce fresh_nonce() {
  Nonce n;
  random_bytes(n.data(), n.size());
  return n;
}

Mac hmac_sha256(const std::string& key, const std::string& message) {
  const Crypto& c = crypto();
  if (!c.hmac) throw Error(c.error);
  Mac out{};
  unsigned int len = 0;
  if (!c.hmac(c.sha256(), key.data(), static_cast<int>(key.size()),
              reinterpret_cast<const unsigned char*>(message.data()), message.size(), out.data(), &len) ||
      len != out.size())
    throw Error("HMAC-SHA256 failed in libcrypto");
  return out;
}

Mac handshake_proof(const std::string& token, const char* role, const std::string& context, const Nonce& first,
                    const Nonce& second) {
  std::string m = std::string(role) + '\0' + context + '\0';
  m.append(reinterpret_cast<const char*>(first.data()), first.size());
  m.append(reinterpret_cast<const char*>(second.data()), second.size());
  return hmac_sha256(token, m);
}

bool same_bytes(const uint8_t* a, const uint8_t* b, size_t n) {
  uint8_t diff = 0;
  for (size_t i = 0; i < n; ++i) diff |= static_cast<uint8_t>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace plexus
