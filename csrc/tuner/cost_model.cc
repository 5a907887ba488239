// Reads the cost model's values from PLEXUS_TUNER_FILE and PLEXUS_TUNER.
#include "tuner/cost_model.h"

#include <fstream>
#include <sstream>
#include <string>

#include "base/config.h"
#include "base/error.h"

namespace plexus {

namespace {

void apply(CostModel& m, const std::string& text, const std::string& origin) {
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
    if (name == "shm_alpha_us") m.shm.alpha_s = v * 1e-6;
    else if (name == "shm_gbps") m.shm.bytes_per_s = v * 1e9;
    else if (name == "tcp_alpha_us") m.local_tcp.alpha_s = v * 1e-6;
    else if (name == "tcp_gbps") m.local_tcp.bytes_per_s = v * 1e9;
    else if (name == "net_alpha_us") m.network.alpha_s = v * 1e-6;
    else if (name == "net_gbps") m.network.bytes_per_s = v * 1e9;
    else if (name == "ucx_alpha_us") m.ucx.alpha_s = v * 1e-6;
    else if (name == "ucx_gbps") m.ucx.bytes_per_s = v * 1e9;
    else
      throw InvalidArgument(origin + ": unknown setting '" + name +
                            "' (known: shm_alpha_us, shm_gbps, tcp_alpha_us, tcp_gbps, net_alpha_us, net_gbps, ucx_alpha_us, "
                            "ucx_gbps)");
  }
}

}  // namespace

CostModel cost_model_from_env() {
  CostModel m;
  std::string path = env_string("PLEXUS_TUNER_FILE");
  if (!path.empty()) {
    std::ifstream f(path);
    if (!f) throw InvalidArgument("PLEXUS_TUNER_FILE=" + path + " cannot be read");
    std::stringstream buf;
    buf << f.rdbuf();
    apply(m, buf.str(), "PLEXUS_TUNER_FILE=" + path);
  }
  std::string inline_settings = env_string("PLEXUS_TUNER");
  if (!inline_settings.empty()) apply(m, inline_settings, "PLEXUS_TUNER");
  return m;
}

}  // namespace plexus
