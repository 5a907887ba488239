// Telling a forked child from the process that made an object: threads are not copied by fork(),
// and sockets, shared memory and UCX state are shared with the parent, so what the parent made is
// neither usable nor safe to tear down in a child.
#pragma once

namespace plexus {

// 0 in the process that first asked, one more in each fork() child (a pthread_atfork handler, so
// asking costs no system call).
int fork_generation();

// Whether something made at fork generation `made_at` belongs to a parent of this process.
inline bool made_before_fork(int made_at) { return made_at != fork_generation(); }

}  // namespace plexus
