#include "tuner/cost_model.h"

#include <fstream>
#include <sstream>

#include "base/config.h"
#include "base/error.h"

namespace plexus {

void CostModel::apply(const std::string& text, const std::string& origin) {
  std::string normalized = text;
  for (char& c : normalized)
    if (c == ';') c = '\n';
  std::istringstream lines(normalized);
  std::string line;
  while (std::getline(lines, line)) {
    auto hash = line.find('#');
    if (hash != std::string::npos) line = line.substr(0, hash);
    auto eq = line.find('=');
    auto trim = [](std::string s) {
      size_t a = s.find_first_not_of(" \t\r"), b = s.find_last_not_of(" \t\r");
      return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
    };
    if (trim(line).empty()) continue;
    if (eq == std::string::npos) throw InvalidArgument(origin + ": '" + trim(line) + "' is not name = value");
    const std::string name = trim(line.substr(0, eq)), value = trim(line.substr(eq + 1));
    char* end = nullptr;
    double v = std::strtod(value.c_str(), &end);
    if (end == value.c_str() || *end != '\0' || !(v > 0))
      throw InvalidArgument(origin + ": " + name + " = '" + value + "' is not a positive number");
    if (name == "shm_alpha_us") shm.alpha_s = v * 1e-6;
    else if (name == "shm_gbps") shm.bytes_per_s = v * 1e9;
    else if (name == "tcp_alpha_us") local_tcp.alpha_s = v * 1e-6;
    else if (name == "tcp_gbps") local_tcp.bytes_per_s = v * 1e9;
    else if (name == "net_alpha_us") network.alpha_s = v * 1e-6;
    else if (name == "net_gbps") network.bytes_per_s = v * 1e9;
    else
      throw InvalidArgument(origin + ": unknown setting '" + name +
                            "' (known: shm_alpha_us, shm_gbps, tcp_alpha_us, tcp_gbps, net_alpha_us, net_gbps)");
  }
}

CostModel CostModel::from_env() {
  CostModel m;
  std::string path = env_string("PLEXUS_TUNER_FILE");
  if (!path.empty()) {
    std::ifstream f(path);
    if (!f) throw InvalidArgument("PLEXUS_TUNER_FILE=" + path + " cannot be read");
    std::stringstream buf;
    buf << f.rdbuf();
    m.apply(buf.str(), "PLEXUS_TUNER_FILE=" + path);
  }
  std::string inline_settings = env_string("PLEXUS_TUNER");
  if (!inline_settings.empty()) m.apply(inline_settings, "PLEXUS_TUNER");
  return m;
}

std::string CostModel::describe() const {
  std::ostringstream os;
  auto one = [&](const char* name, const LinkCost& l) {
    os << name << ": alpha " << l.alpha_s * 1e6 << " us, beta " << l.bytes_per_s / 1e9 << " GB/s";
  };
  one("shm", shm);
  os << "; ";
  one("tcp (same host)", local_tcp);
  os << "; ";
  one("network", network);
  return os.str();
}

}  // namespace plexus
