// Exceptions of every layer. The bindings map them to Python: InvalidArgument -> ValueError,
// TypeMismatch -> TypeError, everything else derived from Error -> plexus.PlexusError
// (a RuntimeError), Timeout -> plexus.PlexusTimeout.
#pragma once

#include <exception>
#include <stdexcept>
#include <string>

namespace plexus {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A peer failed: it died, its connection dropped, or it reported an error of its own.
struct PeerError : Error {
  PeerError(int peer, const std::string& what) : Error(what), peer(peer) {}
  int peer;
};

// A peer said it failed, and why (its error frame or shared-memory abort note).
struct PeerReportedError : PeerError {
  using PeerError::PeerError;
};

// A collective's deadline passed.
struct Timeout : Error {
  using Error::Error;
};

struct InvalidArgument : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

struct TypeMismatch : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// errno as text, for messages about system calls.
std::string errno_text(int err);

// The message of a captured exception ("unknown error" for one that is not a std::exception).
std::string message_of(const std::exception_ptr& ep);

}  // namespace plexus
