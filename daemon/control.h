// The control plane of a running proxy, on the thread that called run():
// signals, live config reload (inotify on the config's directory, SIGHUP),
// bulk-transfer events from the sockmap, and graceful shutdown.
#pragma once

#include "config/config.h"

#include <string>

namespace shunt::proxy {

struct RunOptions {
  std::string config_path;  // empty: built-in default
  unsigned threads = 0;     // 0: one per core
  bool takeover = false;    // take listeners over from the process on admin.control_socket
};

// Runs until SIGTERM/SIGINT, or until a takeover handed everything on and
// the connections it kept have drained. Returns the process exit code.
int run_proxy(const RunOptions& options);

}  // namespace shunt::proxy
