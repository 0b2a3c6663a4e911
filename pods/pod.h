// Lab pods (`shunt pod add|del|list`): a named network namespace wired to the
// host the way a CNI plugin would do it. Pod NAME gets netns NAME, a device
// pair with the host side `sh-NAME` and the pod side `eth0`, the pod address,
// a default route out of the pod, a host route back, and IPv4 forwarding.
#pragma once

#include "common/error.h"
#include "pods/rtnl.h"

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

struct PodSpec {
  std::string name;
  IpAddress ip;
  unsigned prefix = 24;
  std::optional<DeviceType> type;  // nullopt: netkit when the kernel has it, else veth
};

struct PodInfo {
  std::string name;
  std::string type;  // "netkit" | "veth" | the kind found
  std::string host_device;
  std::optional<IpAddress> ip;
  unsigned prefix = 0;
};

struct AddedPod {
  PodInfo info;
  std::string why;  // why this device type was used, for the operator
};

// Errors: EINVAL (bad name/address), EEXIST (pod or device exists),
// EOPNOTSUPP (netkit forced on a kernel without it), else the failing
// kernel call. On failure nothing created is left behind.
Result<AddedPod> add_pod(const PodSpec& spec);
// ENOENT when there is no such pod. Also removes steering pinned for the
// pod's device (fail_closed state of a stopped proxy).
Status del_pod(const std::string& name);
Result<std::vector<PodInfo>> list_pods();

}  // namespace shunt::pods
