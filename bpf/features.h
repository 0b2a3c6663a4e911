// Kernel feature probes for `shunt version` and for startup messages that
// say which feature is missing and what shunt does instead.
#pragma once

#include <string>
#include <vector>

namespace shunt::bpf {

struct Feature {
  std::string name;
  bool available = false;
  std::string detail;  // why not, or how it was detected
};

// sockmap, sk_skb verdict, tcx, netkit, kTLS: each probed by trying it.
std::vector<Feature> probe_features();

}  // namespace shunt::bpf
