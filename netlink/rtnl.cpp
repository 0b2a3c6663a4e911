#include "netlink/rtnl.h"

#include <arpa/inet.h>
#include <linux/fib_rules.h>
#include <linux/if.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/net_namespace.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>

#include <cstring>

namespace shunt::pods {
namespace {

// netkit uapi (linux/if_link.h since 6.7); Debian bookworm's headers are 6.1.
constexpr std::uint16_t kIflaNetkitPeerInfo = 1;
constexpr std::uint16_t kIflaNetkitPrimary = 2;
constexpr std::uint16_t kIflaNetkitPolicy = 3;
constexpr std::uint16_t kIflaNetkitPeerPolicy = 4;
constexpr std::uint16_t kIflaNetkitMode = 5;
constexpr std::uint32_t kNetkitPass = 0;
constexpr std::uint32_t kNetkitModeL3 = 1;

struct AddrBytes {
  unsigned char data[16];
  std::size_t len;
  int family;
};

AddrBytes to_bytes(const IpAddress& a) {
  AddrBytes b{};
  if (a.is_v4()) {
    auto v = a.to_v4().to_bytes();
    std::memcpy(b.data, v.data(), v.size());
    b.len = 4;
    b.family = AF_INET;
  } else {
    auto v = a.to_v6().to_bytes();
    std::memcpy(b.data, v.data(), v.size());
    b.len = 16;
    b.family = AF_INET6;
  }
  return b;
}

LinkInfo parse_link(const nlmsghdr* nlh) {
  LinkInfo info;
  const auto* ifi = static_cast<const ifinfomsg*>(mnl_nlmsg_get_payload(nlh));
  info.ifindex = ifi->ifi_index;
  bool primary = false;
  for_each_attr(nlh, sizeof(*ifi), [&](const nlattr* attr) {
    switch (mnl_attr_get_type(attr)) {
      case IFLA_IFNAME:
        info.name = mnl_attr_get_str(attr);
        break;
      case IFLA_LINK_NETNSID:
        info.link_netnsid = static_cast<std::int32_t>(mnl_attr_get_u32(attr));
        break;
      case IFLA_LINKINFO:
        for_each_nested(attr, [&](const nlattr* inner) {
          if (mnl_attr_get_type(inner) == IFLA_INFO_KIND) info.kind = mnl_attr_get_str(inner);
          if (mnl_attr_get_type(inner) == IFLA_INFO_DATA) {
            for_each_nested(inner, [&](const nlattr* data) {
              if (mnl_attr_get_type(data) == kIflaNetkitPrimary) primary = mnl_attr_get_u8(data) != 0;
            });
          }
        });
        break;
      default:
        break;
    }
  });
  // IFLA_INFO_DATA attribute numbers are per kind: only netkit's mean this.
  info.netkit_primary = info.kind == "netkit" && primary;
  return info;
}

Result<std::optional<LinkInfo>> get_link_impl(NetlinkSocket& nl, int ifindex, const std::string* name,
                                              const std::string& what) {
  NlMessage msg(RTM_GETLINK, 0);
  auto* ifi = msg.header<ifinfomsg>();
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = ifindex;
  if (name) msg.put_str(IFLA_IFNAME, *name);
  std::optional<LinkInfo> found;
  Status st = nl.request(msg, what, [&](const nlmsghdr* nlh) {
    if (nlh->nlmsg_type == RTM_NEWLINK) found = parse_link(nlh);
  });
  if (!st) {
    if (st.error().code == ENODEV) return std::optional<LinkInfo>{};
    return st.error();
  }
  return found;
}

}  // namespace

std::string_view to_string(DeviceType t) { return t == DeviceType::netkit ? "netkit" : "veth"; }

Result<std::optional<LinkInfo>> get_link(NetlinkSocket& nl, const std::string& name) {
  return get_link_impl(nl, 0, &name, "look up device " + name);
}

Result<std::optional<LinkInfo>> get_link(NetlinkSocket& nl, int ifindex) {
  return get_link_impl(nl, ifindex, nullptr, "look up device #" + std::to_string(ifindex));
}

Status create_pair(NetlinkSocket& nl, DeviceType type, const std::string& host, const std::string& peer,
                   int peer_netns_fd) {
  NlMessage msg(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
  msg.header<ifinfomsg>()->ifi_family = AF_UNSPEC;
  msg.put_str(IFLA_IFNAME, host);
  {
    auto linkinfo = msg.nest(IFLA_LINKINFO);
    msg.put_str(IFLA_INFO_KIND, to_string(type));
    auto data = msg.nest(IFLA_INFO_DATA);
    if (type == DeviceType::netkit) {
      msg.put_u32(kIflaNetkitMode, kNetkitModeL3);
      msg.put_u32(kIflaNetkitPolicy, kNetkitPass);
      msg.put_u32(kIflaNetkitPeerPolicy, kNetkitPass);
    }
    // The peer is described by an ifinfomsg followed by its own attributes,
    // all inside VETH_INFO_PEER / IFLA_NETKIT_PEER_INFO.
    auto peer_info =
        msg.nest(type == DeviceType::netkit ? kIflaNetkitPeerInfo : std::uint16_t{VETH_INFO_PEER});
    ifinfomsg peer_ifi{};
    peer_ifi.ifi_family = AF_UNSPEC;
    msg.put_raw(&peer_ifi, sizeof(peer_ifi));
    msg.put_str(IFLA_IFNAME, peer);
    msg.put_u32(IFLA_NET_NS_FD, static_cast<std::uint32_t>(peer_netns_fd));
  }
  return nl.request(msg, "create " + std::string(to_string(type)) + " pair " + host + "/" + peer);
}

Status delete_link(NetlinkSocket& nl, const std::string& name) {
  NlMessage msg(RTM_DELLINK, 0);
  msg.header<ifinfomsg>()->ifi_family = AF_UNSPEC;
  msg.put_str(IFLA_IFNAME, name);
  return nl.request(msg, "delete device " + name);
}

Status set_link_up(NetlinkSocket& nl, int ifindex) {
  NlMessage msg(RTM_NEWLINK, 0);
  auto* ifi = msg.header<ifinfomsg>();
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = ifindex;
  ifi->ifi_flags = IFF_UP;
  ifi->ifi_change = IFF_UP;
  return nl.request(msg, "set device #" + std::to_string(ifindex) + " up");
}

Status add_address(NetlinkSocket& nl, int ifindex, const IpAddress& address, unsigned prefix,
                   std::uint32_t flags) {
  const AddrBytes b = to_bytes(address);
  NlMessage msg(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE);
  auto* ifa = msg.header<ifaddrmsg>();
  ifa->ifa_family = static_cast<unsigned char>(b.family);
  ifa->ifa_prefixlen = static_cast<unsigned char>(prefix);
  ifa->ifa_scope = RT_SCOPE_UNIVERSE;
  ifa->ifa_index = static_cast<unsigned>(ifindex);
  ifa->ifa_flags = static_cast<unsigned char>(flags & 0xff);
  msg.put(IFA_LOCAL, b.data, b.len);
  msg.put(IFA_ADDRESS, b.data, b.len);
  if (flags != 0) msg.put_u32(IFA_FLAGS, flags);
  return nl.request(msg, "add address " + address.to_string() + "/" + std::to_string(prefix));
}

Result<std::vector<std::int32_t>> list_nsids(NetlinkSocket& nl) {
  NlMessage msg(RTM_GETNSID, 0);
  msg.header<rtgenmsg>()->rtgen_family = AF_UNSPEC;
  std::vector<std::int32_t> out;
  Status st = nl.dump(
      msg,
      [&](const nlmsghdr* nlh) {
        if (nlh->nlmsg_type != RTM_NEWNSID) return;
        for_each_attr(nlh, sizeof(rtgenmsg), [&](const nlattr* attr) {
          if (mnl_attr_get_type(attr) == NETNSA_NSID && mnl_attr_get_payload_len(attr) == 4) {
            const auto id = static_cast<std::int32_t>(mnl_attr_get_u32(attr));
            if (id >= 0) out.push_back(id);
          }
        });
      },
      "list netns ids");
  if (!st) return st.error();
  return out;
}

Result<std::vector<AddressEntry>> list_addresses(NetlinkSocket& nl, int ifindex) {
  NlMessage msg(RTM_GETADDR, 0);
  msg.header<ifaddrmsg>()->ifa_family = AF_UNSPEC;
  std::vector<AddressEntry> out;
  Status st = nl.dump(
      msg,
      [&](const nlmsghdr* nlh) {
        if (nlh->nlmsg_type != RTM_NEWADDR) return;
        const auto* ifa = static_cast<const ifaddrmsg*>(mnl_nlmsg_get_payload(nlh));
        if (static_cast<int>(ifa->ifa_index) != ifindex) return;
        for_each_attr(nlh, sizeof(*ifa), [&](const nlattr* attr) {
          if (mnl_attr_get_type(attr) != IFA_ADDRESS) return;
          const auto* p = static_cast<const unsigned char*>(mnl_attr_get_payload(attr));
          if (ifa->ifa_family == AF_INET && mnl_attr_get_payload_len(attr) == 4) {
            boost::asio::ip::address_v4::bytes_type v;
            std::memcpy(v.data(), p, 4);
            out.push_back({boost::asio::ip::address_v4(v), ifa->ifa_prefixlen});
          } else if (ifa->ifa_family == AF_INET6 && mnl_attr_get_payload_len(attr) == 16) {
            boost::asio::ip::address_v6::bytes_type v;
            std::memcpy(v.data(), p, 16);
            out.push_back({boost::asio::ip::address_v6(v), ifa->ifa_prefixlen});
          }
        });
      },
      "list addresses of device #" + std::to_string(ifindex));
  if (!st) return st.error();
  return out;
}

namespace {
void fill_route(NlMessage& msg, const RouteSpec& r) {
  auto* rtm = msg.header<rtmsg>();
  rtm->rtm_family = static_cast<unsigned char>(r.family);
  rtm->rtm_dst_len = static_cast<unsigned char>(r.dst ? r.dst_len : 0);
  rtm->rtm_table = static_cast<unsigned char>(r.table < 256 ? r.table : RT_TABLE_UNSPEC);
  rtm->rtm_protocol = RTPROT_STATIC;
  rtm->rtm_scope = r.scope;
  rtm->rtm_type = r.type;
  msg.put_u32(RTA_TABLE, r.table);
  if (r.dst) {
    const AddrBytes b = to_bytes(*r.dst);
    msg.put(RTA_DST, b.data, b.len);
  }
  if (r.gateway) {
    const AddrBytes b = to_bytes(*r.gateway);
    msg.put(RTA_GATEWAY, b.data, b.len);
  }
  if (r.oif) msg.put_u32(RTA_OIF, static_cast<std::uint32_t>(r.oif));
}

std::string describe(const RouteSpec& r) {
  std::string s = r.dst ? r.dst->to_string() + "/" + std::to_string(r.dst_len)
                        : std::string(r.family == AF_INET6 ? "::/0" : "0.0.0.0/0");
  return "route " + s + " table " + std::to_string(r.table);
}

void fill_rule(NlMessage& msg, const RuleSpec& r) {
  auto* frh = msg.header<fib_rule_hdr>();
  frh->family = static_cast<unsigned char>(r.family);
  frh->action = FR_ACT_TO_TBL;
  frh->table = static_cast<unsigned char>(r.table < 256 ? r.table : RT_TABLE_UNSPEC);
  msg.put_u32(FRA_TABLE, r.table);
  msg.put_u32(FRA_PRIORITY, r.priority);
  msg.put_u32(FRA_FWMARK, r.fwmark);
  msg.put_u32(FRA_FWMASK, r.fwmask);
}

std::string describe(const RuleSpec& r) {
  char mark[48];
  std::snprintf(mark, sizeof(mark), "0x%x/0x%x", r.fwmark, r.fwmask);
  return std::string(r.family == AF_INET6 ? "IPv6" : "IPv4") + " rule fwmark " + mark + " lookup " +
         std::to_string(r.table) + " priority " + std::to_string(r.priority);
}
// Deleting what is already gone succeeds: cleanup also runs after a crash or
// a second time (pod del after shunt exit).
Status already_gone_is_ok(Status st) {
  if (!st && (st.error().code == ESRCH || st.error().code == ENOENT)) return ok_status();
  return st;
}
}  // namespace

Status replace_route(NetlinkSocket& nl, const RouteSpec& route) {
  NlMessage msg(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE);
  fill_route(msg, route);
  return nl.request(msg, "add " + describe(route));
}

Status delete_route(NetlinkSocket& nl, const RouteSpec& route) {
  NlMessage msg(RTM_DELROUTE, 0);
  fill_route(msg, route);
  return already_gone_is_ok(nl.request(msg, "delete " + describe(route)));
}

Status add_rule(NetlinkSocket& nl, const RuleSpec& rule) {
  NlMessage msg(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL);
  fill_rule(msg, rule);
  return nl.request(msg, "add " + describe(rule));
}

Status delete_rule(NetlinkSocket& nl, const RuleSpec& rule) {
  NlMessage msg(RTM_DELRULE, 0);
  fill_rule(msg, rule);
  return already_gone_is_ok(nl.request(msg, "delete " + describe(rule)));
}

}  // namespace shunt::pods
