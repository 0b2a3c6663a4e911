// Lab pods (`shunt pod add|del|list`): a named network namespace wired to the
// host the way a CNI plugin would do it. Pod NAME gets netns NAME, a device
// pair with the host side `sh-NAME` and the pod side `eth0`, the pod's
// addresses (IPv4, IPv6 or one of each), a default route per family out of
// the pod, host routes back, and forwarding.
#pragma once

#include "common/error.h"
#include "netlink/rtnl.h"

#include <optional>
#include <string>
#include <vector>

namespace shunt::pods {

inline constexpr const char* kHostDevicePrefix = "sh-";
inline constexpr const char* kPodDevice = "eth0";
// IFNAMSIZ - 1 - strlen("sh-"): the host-side name must fit a device name.
inline constexpr std::size_t kMaxPodName = 12;

std::string host_device_name(const std::string& pod);
// EINVAL with the reason when the name cannot be a pod name.
Status validate_pod_name(const std::string& pod);

// The IPv6 gateway of every veth pod: a link-local address on the host side
// of each pair (link-local addresses are per device, so every pair can use the
// same one, as Calico does with its fe80:: gateway). netkit pods need none.
inline constexpr const char* kPodGatewayV6 = "fe80::1";

struct PodAddress {
  IpAddress ip;
  unsigned prefix = 0;
};
std::string to_string(const PodAddress& a);  // "10.200.0.2/24", "fd00:200::2/64"

struct PodSpec {
  std::string name;
  std::vector<PodAddress> addresses;  // 1 or 2: at most one per family
  std::optional<DeviceType> type;     // nullopt: netkit when the kernel has it, else veth
};

struct PodInfo {
  std::string name;
  std::string type;  // "netkit" | "veth" | the kind found
  std::string host_device;
  std::vector<PodAddress> addresses;  // global ones, IPv4 first (link-local IPv6 left out)
};

struct AddedPod {
  PodInfo info;
  std::string why;  // why this device type was used, for the operator
  // Forwarding sysctls this call turned on, one line each for the operator
  // (empty when they were on already).
  std::vector<std::string> forwarding;
};

// Errors: EINVAL (bad name/address, two addresses of one family), EEXIST (pod or device exists),
// EOPNOTSUPP (netkit forced on a kernel without it), else the failing
// kernel call. On failure nothing created is left behind.
Result<AddedPod> add_pod(const PodSpec& spec);
// ENOENT when there is no such pod. Also removes steering pinned for the
// pod's device (fail_closed state of a stopped proxy).
Status del_pod(const std::string& name);
Result<std::vector<PodInfo>> list_pods();
// After the last pod is gone: puts back the forwarding sysctls `pod add`
// changed (and only those); one line per setting restored.
std::vector<std::string> restore_forwarding_if_no_pods();

}  // namespace shunt::pods
