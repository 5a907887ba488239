// The one table of transports, in order of preference: a peer is reached by the first one that
// PLEXUS_TRANSPORTS allows and that can connect the pair. Adding a transport: one new file that
// defines its opener, its opener's name below, and one row.
#include "transport/transport.h"

namespace plexus {

using Opener = std::unique_ptr<Transport>(const TransportSetup& setup);
Opener open_shm, open_ucx, open_tcp;  // each defined in its transport's file

const std::vector<TransportInfo>& transport_table() {
  static const std::vector<TransportInfo> table = {
      {"shm", "same host: byte rings and staging buffers in shared memory (/dev/shm)", open_shm},
      {"ucx", "between hosts: InfiniBand / RoCE (or what UCX_TLS allows) through UCX, loaded at run time", open_ucx},
      {"tcp", "anywhere: one TCP stream per peer pair and channel", open_tcp},
  };
  return table;
}

}  // namespace plexus
