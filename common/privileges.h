// Least privilege for `shunt run` (docs/operating.md, "Capabilities").
//
// Linux capabilities belong to threads, not processes: capset(2) changes
// only the calling thread, and a new thread starts with its creator's sets.
// So the proxy drops on the control thread once setup is done and before
// the worker threads exist, and the threads created earlier (admin server,
// access-log writer) drop their own on start.
#pragma once

#include "common/error.h"

#include <string>
#include <vector>

namespace shunt::proxy {

enum class ThreadRole {
  // Control and worker threads: IP_TRANSPARENT upstream sockets, forced
  // socket buffers, sockmap handover, steering updates, rule removal at exit.
  runtime,
  // Admin server: reads BPF maps (kernel byte counters, steering stats).
  admin,
  // Access-log writer: writes to already-open files; needs nothing.
  none,
};

// Reduces the calling thread's effective, permitted and (when it holds
// CAP_SETPCAP) bounding sets to what `role` needs, clears the inheritable
// and ambient sets and sets no_new_privs. Capabilities the thread does not
// hold are not an error: an unprivileged run simply keeps less.
Status drop_capabilities(ThreadRole role);

// Names of the capabilities the calling thread holds (effective set) among
// those `role` keeps, e.g. {"cap_net_admin", "cap_bpf"}; empty for an
// unprivileged run. For the log line after drop_capabilities().
std::vector<std::string> held_capabilities(ThreadRole role);

}  // namespace shunt::proxy
