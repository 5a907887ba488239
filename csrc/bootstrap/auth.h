// Job authentication: the job token (PLEXUS_AUTH_TOKEN, or the first line of PLEXUS_AUTH_FILE,
// the same on every rank), nonces, and HMAC-SHA256 from the system's OpenSSL libcrypto. With a
// token, the store and every peer connection start with a challenge-response over both sides'
// nonces: each side proves it holds the token and the token never crosses the wire.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace plexus {

using Mac = std::array<uint8_t, 32>;
using Nonce = std::array<uint8_t, 32>;

// The job token, or "" when neither variable is set (the job is unauthenticated). Throws
// InvalidArgument when PLEXUS_AUTH_FILE cannot be read or holds no token.
std::string job_token();

// Bytes from the kernel's random source.
void random_bytes(void* out, size_t n);
Nonce fresh_nonce();

// HMAC-SHA256(key, message). libcrypto is loaded at first use (building needs no OpenSSL
// headers); throws Error when a token is set but no libcrypto can be loaded.
Mac hmac_sha256(const std::string& key, const std::string& message);

// The proof of one side of a handshake: HMAC(token, role | context | first nonce | second nonce).
// `role` keeps the two sides' proofs apart, so that one cannot be replayed as the other.
Mac handshake_proof(const std::string& token, const char* role, const std::string& context, const Nonce& first,
                    const Nonce& second);

// Compares in constant time: how many bytes matched must not leak.
bool same_bytes(const uint8_t* a, const uint8_t* b, size_t n);

}  // namespace plexus
