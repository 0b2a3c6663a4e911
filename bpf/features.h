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
  // False when the probe could not run (no permission to load BPF): then
  // `available` says nothing about the kernel.
  bool probed = true;
};

// sockmap, sk_skb verdict, tcx, netkit, kTLS: each probed by trying it;
// sk_assign_reuseport from the kernel release.
std::vector<Feature> probe_features();

// Whether bpf_sk_assign accepts a SO_REUSEPORT listener (and then runs the
// group's selection), which Linux does since 6.5; before, it fails with
// ESOCKTNOSUPPORT. Decided from the kernel release: the helper's behaviour
// cannot be probed without attaching to a device and sending a packet.
bool sk_assign_takes_reuseport();

// The running kernel's release is at least MAJOR.MINOR (false if unparsable):
// for behaviour that differs between versions and cannot be probed safely.
bool kernel_at_least(int major, int minor);

}  // namespace shunt::bpf
