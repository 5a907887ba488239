// Text that came from elsewhere (a peer's error frame, its shared-memory abort message) made
// safe to put into an exception: Python turns exception messages into str, which needs UTF-8.
#pragma once

#include <string>

namespace plexus {

// Keeps valid UTF-8 and newlines and tabs; every other byte (broken sequences, control
// characters) becomes '?'.
std::string printable_text(const std::string& foreign);

}  // namespace plexus
