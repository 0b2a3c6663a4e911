// Typed rtnetlink operations used by the pod lab and by steering: links,
// addresses, routes and policy rules. Each call is one acknowledged request.
#pragma once

#include "common/error.h"
#include "netlink/netlink.h"

#include <boost/asio/ip/address.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace shunt::pods {

using IpAddress = boost::asio::ip::address;

enum class DeviceType { netkit, veth };
std::string_view to_string(DeviceType);

struct LinkInfo {
  int ifindex = 0;
  std::string name;
  std::string kind;  // IFLA_INFO_KIND: "veth", "netkit", ... ("" for plain devices)
  bool netkit_primary = false;
  // IFLA_LINK_NETNSID: the id, in this namespace, of the namespace the
  // device's peer lives in (veth, netkit); -1 when it has none.
  std::int32_t link_netnsid = -1;
};

// nullopt when no such device (ENODEV is not an error here).
Result<std::optional<LinkInfo>> get_link(NetlinkSocket& nl, const std::string& name);
Result<std::optional<LinkInfo>> get_link(NetlinkSocket& nl, int ifindex);

// The ids this namespace has given other namespaces (RTM_GETNSID dump):
// the nsids that BPF helpers such as bpf_sk_lookup_tcp take.
Result<std::vector<std::int32_t>> list_nsids(NetlinkSocket& nl);

// Creates HOST in the socket's namespace and its peer PEER inside the
// namespace `peer_netns_fd`. netkit pairs are L3 mode with both default
// policies "forward"; a kernel without netkit answers EOPNOTSUPP.
Status create_pair(NetlinkSocket& nl, DeviceType type, const std::string& host, const std::string& peer,
                   int peer_netns_fd);
Status delete_link(NetlinkSocket& nl, const std::string& name);
Status set_link_up(NetlinkSocket& nl, int ifindex);

struct AddressEntry {
  IpAddress address;
  unsigned prefix = 0;
};
// flags: IFA_F_* (e.g. IFA_F_NODAD | IFA_F_NOPREFIXROUTE for a pod's IPv6
// address), sent as IFA_FLAGS since the high ones do not fit ifa_flags.
Status add_address(NetlinkSocket& nl, int ifindex, const IpAddress& address, unsigned prefix,
                   std::uint32_t flags = 0);
Result<std::vector<AddressEntry>> list_addresses(NetlinkSocket& nl, int ifindex);

struct RouteSpec {
  int family = 0;                // AF_INET / AF_INET6
  std::optional<IpAddress> dst;  // nullopt = default route
  unsigned dst_len = 0;
  std::uint32_t table = 254;  // RT_TABLE_MAIN
  std::uint8_t type = 1;      // RTN_UNICAST
  std::uint8_t scope = 253;   // RT_SCOPE_LINK
  int oif = 0;
  std::optional<IpAddress> gateway;  // RTA_GATEWAY (then scope should be RT_SCOPE_UNIVERSE)
};
// NLM_F_REPLACE: installing a route that is already there is not an error,
// which makes re-running after a crash work.
Status replace_route(NetlinkSocket& nl, const RouteSpec& route);
// ENOENT (already gone) is success.
Status delete_route(NetlinkSocket& nl, const RouteSpec& route);

struct RuleSpec {
  int family = 0;
  std::uint32_t priority = 0;
  std::uint32_t fwmark = 0;
  std::uint32_t fwmask = 0;
  std::uint32_t table = 0;
};
Status add_rule(NetlinkSocket& nl, const RuleSpec& rule);
// ENOENT (already gone) is success.
Status delete_rule(NetlinkSocket& nl, const RuleSpec& rule);

}  // namespace shunt::pods
