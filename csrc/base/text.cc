// printable_text: foreign bytes made safe for an exception message (see text.h).
#include "base/text.h"

namespace plexus {

namespace {

// Length of the valid UTF-8 sequence starting at s[i] (shortest form, no surrogates), or 0.
size_t utf8_sequence(const std::string& s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  const size_t n = c >= 0xF5 ? 0 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k)
    if ((b(i + k) & 0xC0) != 0x80) return 0;
  if (n == 3 && ((c == 0xE0 && b(i + 1) < 0xA0) || (c == 0xED && b(i + 1) >= 0xA0))) return 0;
  if (n == 4 && ((c == 0xF0 && b(i + 1) < 0x90) || (c == 0xF4 && b(i + 1) >= 0x90))) return 0;
  return n;
}

}  // namespace

std::string printable_text(const std::string& foreign) {
  std::string out;
  out.reserve(foreign.size());
  for (size_t i = 0; i < foreign.size();) {
    const unsigned char c = static_cast<unsigned char>(foreign[i]);
    if (c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7F)) {
      out += static_cast<char>(c);
      ++i;
    } else if (size_t n = c >= 0x80 ? utf8_sequence(foreign, i) : 0) {
      // C1 controls (U+0080-U+009F, a terminal's CSI among them) are control characters too.
      const bool c1 = n == 2 && c == 0xC2 && static_cast<unsigned char>(foreign[i + 1]) < 0xA0;
      if (c1) out += '?';
      else out.append(foreign, i, n);
      i += n;
    } else {
      out += '?';
      ++i;
    }
  }
  return out;
}

}  // namespace plexus
