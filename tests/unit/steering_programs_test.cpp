// The steering programs' decisions, run in the kernel with BPF_PROG_TEST_RUN
// on hand-built packets: the real objects, verifier and helpers, no device.
// What needs a device and a live connection (bpf_sk_assign of a SYN, the
// reply of the destination pod) is covered by test_steering.py and tests/vm.
//
// Needs root (CAP_BPF + CAP_NET_ADMIN) like the rest of the suite.
#include "bpf/owned.h"
#include "bpf/steering.h"
#include "bpf/steering_shared.h"
#include "config/config.h"
#include "policy/policy.h"
#include "steer_netkit.skel.h"
#include "steer_tcx.skel.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace {

// tcx / tc verdicts as the test run returns them (u32).
constexpr std::uint32_t kNext = static_cast<std::uint32_t>(-1);
constexpr std::uint32_t kPass = 0;
constexpr std::uint32_t kDrop = 2;

struct Flow {
  int family = 4;
  const char* src = "10.77.0.2";
  const char* dst = "10.77.0.3";
  std::uint8_t proto = IPPROTO_TCP;
  std::uint16_t sport = 40000;
  std::uint16_t dport = 8080;
  bool syn = true;
  bool ack = false;
};

void put16(std::vector<std::uint8_t>& p, std::size_t at, std::uint16_t host_order) {
  p[at] = static_cast<std::uint8_t>(host_order >> 8);
  p[at + 1] = static_cast<std::uint8_t>(host_order & 0xff);
}

// Ethernet + IPv4/IPv6 + TCP/UDP header, no payload. Checksums are not
// checked on this path.
std::vector<std::uint8_t> packet(const Flow& f) {
  const std::size_t ip_len = f.family == 4 ? 20 : 40;
  const std::size_t l4_len = f.proto == IPPROTO_TCP ? 20 : 8;
  std::vector<std::uint8_t> p(14 + ip_len + l4_len, 0);
  put16(p, 12, f.family == 4 ? 0x0800 : 0x86dd);
  std::uint8_t* ip = p.data() + 14;
  if (f.family == 4) {
    ip[0] = 0x45;
    put16(p, 14 + 2, static_cast<std::uint16_t>(ip_len + l4_len));
    ip[8] = 64;
    ip[9] = f.proto;
    inet_pton(AF_INET, f.src, ip + 12);
    inet_pton(AF_INET, f.dst, ip + 16);
  } else {
    ip[0] = 0x60;
    put16(p, 14 + 4, static_cast<std::uint16_t>(l4_len));
    ip[6] = f.proto;
    ip[7] = 64;
    inet_pton(AF_INET6, f.src, ip + 8);
    inet_pton(AF_INET6, f.dst, ip + 24);
  }
  const std::size_t l4 = 14 + ip_len;
  put16(p, l4, f.sport);
  put16(p, l4 + 2, f.dport);
  if (f.proto == IPPROTO_TCP) {
    p[l4 + 12] = 5 << 4;
    p[l4 + 13] = static_cast<std::uint8_t>((f.syn ? 0x02 : 0) | (f.ack ? 0x10 : 0));
  } else {
    put16(p, l4 + 4, static_cast<std::uint16_t>(l4_len));
  }
  return p;
}

shunt_deny_rule deny(int family, const char* src, unsigned src_len, const char* dst, unsigned dst_len,
                     std::uint16_t port) {
  shunt_deny_rule r{};
  auto fill = [family](const char* text, unsigned len, __u32* net, __u32* mask) {
    std::array<std::uint8_t, 16> a{};
    std::array<std::uint8_t, 16> m{};
    inet_pton(family == 4 ? AF_INET : AF_INET6, text, a.data());
    for (unsigned i = 0; i < (family == 4 ? 4u : 16u); ++i) {
      const unsigned bits = len >= (i + 1) * 8 ? 8 : (len > i * 8 ? len - i * 8 : 0);
      m[i] = static_cast<std::uint8_t>(bits == 0 ? 0 : (0xff << (8 - bits)) & 0xff);
      a[i] &= m[i];
    }
    std::memcpy(net, a.data(), 16);
    std::memcpy(mask, m.data(), 16);
  };
  fill(src, src_len, r.src_net, r.src_mask);
  fill(dst, dst_len, r.dst_net, r.dst_mask);
  r.family = static_cast<__u8>(family);
  r.proto = port ? IPPROTO_TCP : 0;
  r.dport = htons(port);
  return r;
}

bpf_test_run_opts run_opts(std::vector<std::uint8_t>& data) {
  bpf_test_run_opts opts{};
  opts.sz = sizeof(opts);
  opts.data_in = data.data();
  opts.data_size_in = static_cast<__u32>(data.size());
  opts.repeat = 1;
  return opts;
}

struct Outcome {
  std::uint32_t verdict;
  std::uint32_t mark;
};

// The maps both programs declare, by fd.
struct SteeringMaps {
  int cfg, ports, deny, listen, stats;
};

class Program {
 public:
  Program(int prog_fd, SteeringMaps maps) : prog_fd_(prog_fd), maps_(maps) {}

  void configure(std::uint32_t flags, const std::vector<shunt_deny_rule>& rules = {},
                 const std::vector<std::uint16_t>& ports = {8080}) {
    for (std::uint32_t i = 0; i < rules.size(); ++i)
      ASSERT_EQ(bpf_map_update_elem(maps_.deny, &i, &rules[i], BPF_ANY), 0);
    for (std::uint16_t port : ports) {
      const std::uint32_t key = port;
      const std::uint8_t on = 1;
      ASSERT_EQ(bpf_map_update_elem(maps_.ports, &key, &on, BPF_ANY), 0);
    }
    const std::uint32_t zero = 0;
    shunt_steer_config c{flags, static_cast<__u32>(rules.size())};
    ASSERT_EQ(bpf_map_update_elem(maps_.cfg, &zero, &c, BPF_ANY), 0);
  }

  Outcome run(const Flow& f, std::uint32_t mark_in = 0) {
    auto data = packet(f);
    __sk_buff ctx{};
    ctx.mark = mark_in;
    __sk_buff ctx_out{};
    bpf_test_run_opts opts = run_opts(data);
    opts.ctx_in = &ctx;
    opts.ctx_size_in = sizeof(ctx);
    opts.ctx_out = &ctx_out;
    opts.ctx_size_out = sizeof(ctx_out);
    const int err = bpf_prog_test_run_opts(prog_fd_, &opts);
    EXPECT_EQ(err, 0) << std::strerror(errno);
    return {opts.retval, ctx_out.mark};
  }

  std::uint64_t count(shunt_steer_stat stat) {
    const int ncpu = libbpf_num_possible_cpus();
    std::vector<std::uint64_t> per_cpu(static_cast<std::size_t>(ncpu));
    const std::uint32_t key = stat;
    if (bpf_map_lookup_elem(maps_.stats, &key, per_cpu.data()) != 0) return 0;
    std::uint64_t sum = 0;
    for (auto v : per_cpu) sum += v;
    return sum;
  }

 private:
  int prog_fd_;
  SteeringMaps maps_;
};

class TcxProgram : public ::testing::Test {
 protected:
  void SetUp() override {
    skel_.reset(steer_tcx__open_and_load());
    ASSERT_TRUE(skel_) << "load steer_tcx (needs root): " << std::strerror(errno);
    auto& m = skel_->maps;
    prog_.emplace(
        bpf_program__fd(skel_->progs.shunt_steer_tcx),
        SteeringMaps{bpf_map__fd(m.steer_cfg), bpf_map__fd(m.steer_ports), bpf_map__fd(m.steer_deny),
                     bpf_map__fd(m.steer_listen), bpf_map__fd(m.steer_stats)});
  }
  Program& prog() { return *prog_; }
  int listen_map() { return bpf_map__fd(skel_->maps.steer_listen); }

  shunt::bpf::Owned<steer_tcx, steer_tcx__destroy> skel_;
  std::optional<Program> prog_;
};

TEST_F(TcxProgram, NonIpTrafficIsNotTouched) {
  prog().configure(SHUNT_STEER_F_ALL_PORTS);
  auto data = packet({});
  put16(data, 12, 0x0806);  // ARP
  bpf_test_run_opts opts = run_opts(data);
  ASSERT_EQ(bpf_prog_test_run_opts(bpf_program__fd(skel_->progs.shunt_steer_tcx), &opts), 0);
  EXPECT_EQ(opts.retval, kNext);
}

TEST_F(TcxProgram, ProxyDownFailClosedDropsInterceptedSyn) {
  prog().configure(0);
  EXPECT_EQ(prog().run({}).verdict, kDrop);
  EXPECT_EQ(prog().count(SHUNT_STAT_PROXY_DOWN_DROP), 1u);
  // A port that is not intercepted flows.
  EXPECT_EQ(prog().run({.dport = 9090}).verdict, kNext);
}

TEST_F(TcxProgram, ProxyDownFailOpenPassesButStillEnforcesDenyEntries) {
  prog().configure(SHUNT_STEER_F_FAIL_OPEN, {deny(4, "10.77.0.2", 32, "10.77.0.3", 32, 8080)});
  EXPECT_EQ(prog().run({.src = "10.77.0.9"}).verdict, kNext);
  EXPECT_EQ(prog().count(SHUNT_STAT_PROXY_DOWN_PASS), 1u);
  EXPECT_EQ(prog().run({}).verdict, kDrop);
  EXPECT_EQ(prog().count(SHUNT_STAT_DENY_DROP), 1u);
}

TEST_F(TcxProgram, AllPortsInterceptsEveryTcpPort) {
  prog().configure(SHUNT_STEER_F_ALL_PORTS, {}, {});
  EXPECT_EQ(prog().run({.dport = 1}).verdict, kDrop);  // intercepted, proxy down, fail_closed
  EXPECT_EQ(prog().run({.dport = 65535}).verdict, kDrop);
  // UDP is never intercepted.
  EXPECT_EQ(prog().run({.proto = IPPROTO_UDP, .dport = 53}).verdict, kNext);
}

TEST_F(TcxProgram, DenyEntriesMatchPrefixPortAndConnectionAttemptsOnly) {
  prog().configure(
      0, {deny(4, "10.77.0.0", 24, "10.78.0.0", 16, 9091), deny(4, "0.0.0.0", 0, "10.79.0.5", 32, 0)});
  // Port entry: TCP SYN from the prefix to the port.
  EXPECT_EQ(prog().run({.dst = "10.78.9.9", .dport = 9091}).verdict, kDrop);
  EXPECT_EQ(prog().run({.dst = "10.78.9.9", .dport = 9092}).verdict, kNext);
  EXPECT_EQ(prog().run({.src = "10.76.0.2", .dst = "10.78.9.9", .dport = 9091}).verdict, kNext);
  // Segments of an established connection (the destination's own) pass.
  EXPECT_EQ(prog().run({.dst = "10.78.9.9", .dport = 9091, .syn = false, .ack = true}).verdict, kNext);
  // Port entries are TCP only.
  EXPECT_EQ(prog().run({.dst = "10.78.9.9", .proto = IPPROTO_UDP, .dport = 9091}).verdict, kNext);
  // L3 entry: every protocol, every packet.
  EXPECT_EQ(prog().run({.dst = "10.79.0.5", .proto = IPPROTO_UDP, .dport = 53}).verdict, kDrop);
  EXPECT_EQ(prog().run({.dst = "10.79.0.5", .dport = 22, .syn = false, .ack = true}).verdict, kNext);
  EXPECT_EQ(prog().run({.dst = "10.79.0.5", .dport = 22}).verdict, kDrop);
  EXPECT_EQ(prog().count(SHUNT_STAT_DENY_DROP), 3u);
}

TEST_F(TcxProgram, DenyCountBoundsTheTable) {
  // An entry past deny_count is stale (the loader shrinks the count first).
  prog().configure(0, {deny(4, "0.0.0.0", 0, "10.79.0.5", 32, 0)});
  EXPECT_EQ(prog().run({.dst = "10.79.0.5", .dport = 22}).verdict, kDrop);
  const std::uint32_t zero = 0;
  shunt_steer_config c{0, 0};
  ASSERT_EQ(bpf_map_update_elem(bpf_map__fd(skel_->maps.steer_cfg), &zero, &c, BPF_ANY), 0);
  EXPECT_EQ(prog().run({.dst = "10.79.0.5", .dport = 22}).verdict, kNext);
}

TEST_F(TcxProgram, Ipv6IsParsedAndMatched) {
  prog().configure(0, {deny(6, "fd00:77::", 64, "fd00:78::3", 128, 9091)});
  EXPECT_EQ(prog().run({.family = 6, .src = "fd00:77::2", .dst = "fd00:78::3", .dport = 9091}).verdict,
            kDrop);
  EXPECT_EQ(prog().run({.family = 6, .src = "fd00:76::2", .dst = "fd00:78::3", .dport = 9091}).verdict,
            kNext);
  // An IPv4 entry never matches IPv6 traffic and the other way round.
  EXPECT_EQ(prog().run({.src = "10.77.0.2", .dst = "10.78.0.3", .dport = 9091}).verdict, kNext);
  // Intercepted IPv6 with no IPv6 listener: the proxy is down for IPv6.
  EXPECT_EQ(prog().run({.family = 6, .src = "fd00:77::2", .dst = "fd00:78::3"}).verdict, kDrop);
  EXPECT_EQ(prog().count(SHUNT_STAT_PROXY_DOWN_DROP), 1u);
}

TEST_F(TcxProgram, SegmentOfUnknownConnectionGoesToTheLocalStackWhenTheProxyRuns) {
  // A transparent listener in the map: the proxy is up. A non-SYN segment
  // no proxy socket owns is marked and handed to the local stack, which
  // answers with a reset instead of letting it bypass the proxy.
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  ASSERT_EQ(::listen(fd, 8), 0);
  const std::uint32_t slot = SHUNT_LISTENER_V4;
  const std::uint64_t value = static_cast<std::uint64_t>(fd);
  ASSERT_EQ(bpf_map_update_elem(listen_map(), &slot, &value, BPF_ANY), 0);
  prog().configure(0);
  const Outcome o = prog().run({.syn = false, .ack = true});
  EXPECT_EQ(o.verdict, kPass);
  EXPECT_EQ(o.mark & SHUNT_STEER_MARK, SHUNT_STEER_MARK);
  EXPECT_EQ(prog().count(SHUNT_STAT_TO_LOCAL_STACK), 1u);
  ::close(fd);
}

TEST_F(TcxProgram, NetkitMarkMeansInterceptedWhateverThePort) {
  prog().configure(0, {}, {});
  // Unmarked: port 7000 is not intercepted.
  EXPECT_EQ(prog().run({.dport = 7000}).verdict, kNext);
  // Marked by the netkit peer program: intercepted (here: proxy down).
  EXPECT_EQ(prog().run({.dport = 7000}, SHUNT_STEER_MARK).verdict, kDrop);
}

// One resolution of selectors: the deny table steering loads is made from the
// compiled Policy, so the program drops a connection attempt exactly when
// Policy::decide_connection() denies it by an L4 deny rule (not by default,
// and never a flow an http or tls rule would decide). Checked over every
// (source, destination, port) of a config that mixes pods by name and by
// labels, dual-stack pods, IPv4 and IPv6 CIDRs, an IPv4-mapped CIDR, ports
// and no ports, allow rules and http/tls deny rules beside them.
TEST_F(TcxProgram, DenyTableDropsExactlyWhatPolicyDeniesAtL4) {
  const auto loaded = shunt::config::parse_config(R"(
proxy: {listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]}
pods:
  - {name: web, ip: [10.77.0.2, "fd00:77::2"], labels: {app: web, tier: front}}
  - {name: web2, ip: 10.77.0.4, labels: {app: web, tier: canary}}
  - {name: api, ip: ["fd00:77::3", 10.77.0.3], labels: {app: api}}
  - {name: db, ip: "fd00:77::5", labels: {app: db}}
policy:
  default: allow
  rules:
    - {name: web-api-admin, from: {pod: web}, to: {pod: api, ports: [9091, 9092]}, action: deny}
    - {name: canary-db, from: {labels: {tier: canary}}, to: {labels: {app: db}}, action: deny}
    - {name: app-web-to-db, from: {labels: {app: web}}, to: {pod: db, ports: [5432]}, action: deny}
    - {name: outside-v4, from: {cidr: 10.99.0.0/16}, to: {labels: {app: api}}, action: deny}
    - {name: outside-v6, from: {cidr: "fd00:99::/32"}, to: {cidr: "fd00:77::/64", ports: [443]}, action: deny}
    - {name: mapped, from: {cidr: "::ffff:10.98.0.0/112"}, to: {pod: web2, ports: [8080]}, action: deny}
    - {name: nobody, from: {labels: {app: none}}, to: {pod: api}, action: deny}
    - {name: allow-web, from: {labels: {app: web}}, to: {labels: {app: api}}, action: allow}
    - name: http-deny
      from: {pod: web2}
      to: {pod: api, ports: [8080]}
      action: deny
      http: [{path: /admin}]
    - {name: tls-deny, from: {pod: web2}, to: {pod: api, ports: [443]}, action: deny, tls: {sni: [x.example]}}
)",
                                                  "t.yaml");
  for (const auto& d : loaded.diagnostics) ADD_FAILURE() << d.to_string();
  ASSERT_TRUE(loaded.config);
  const auto policy = shunt::policy::Policy::build(loaded.config, 1);
  auto table = shunt::bpf::deny_table(*policy);
  ASSERT_TRUE(table) << table.error().message();
  // No intercepted port: every SYN meets the deny entries.
  prog().configure(0, *table, {});

  const std::vector<const char*> v4 = {"10.77.0.2", "10.77.0.3", "10.77.0.4",
                                       "10.99.1.1", "10.98.0.7", "10.1.1.1"};
  const std::vector<const char*> v6 = {"fd00:77::2", "fd00:77::3", "fd00:77::5", "fd00:99::1", "fd00:1::1"};
  const std::uint16_t ports[] = {80, 443, 5432, 8080, 9091, 9092};
  std::set<std::string> dropped_by;  // deciding rules of the flows dropped
  int passes = 0;
  for (const auto* addrs : {&v4, &v6}) {
    for (const char* src : *addrs) {
      for (const char* dst : *addrs) {
        if (std::string_view(src) == dst) continue;
        for (const std::uint16_t port : ports) {
          Flow f;
          f.family = addrs == &v4 ? 4 : 6;
          f.src = src;
          f.dst = dst;
          f.dport = port;
          const auto decision = policy->decide_connection(
              {boost::asio::ip::make_address(src), boost::asio::ip::make_address(dst), port});
          const bool policy_drops = decision.inspect == shunt::policy::Inspect::none &&
                                    decision.decision.verdict == shunt::policy::Verdict::deny &&
                                    decision.decision.rule != "default";
          const bool bpf_drops = prog().run(f).verdict == kDrop;
          EXPECT_EQ(bpf_drops, policy_drops)
              << src << " -> " << dst << ":" << port << " policy: " << decision.decision.rule << " ("
              << decision.decision.reason << ")";
          if (bpf_drops)
            dropped_by.insert(decision.decision.rule);
          else
            ++passes;
        }
      }
    }
  }
  // The comparison means something only if both outcomes occur: every L4
  // deny rule that can match one of these flows dropped one (canary-db's
  // pods share no family, nobody's labels select no pod).
  const std::set<std::string> expected = {"web-api-admin", "app-web-to-db", "outside-v4", "outside-v6",
                                          "mapped"};
  EXPECT_EQ(dropped_by, expected);
  EXPECT_GT(passes, 100);
}

class NetkitProgram : public ::testing::Test {
 protected:
  void SetUp() override {
    skel_.reset(steer_netkit__open_and_load());
    ASSERT_TRUE(skel_) << "load steer_netkit (needs root): " << std::strerror(errno);
    auto& m = skel_->maps;
    prog_.emplace(
        bpf_program__fd(skel_->progs.shunt_steer_netkit),
        SteeringMaps{bpf_map__fd(m.steer_cfg), bpf_map__fd(m.steer_ports), bpf_map__fd(m.steer_deny),
                     bpf_map__fd(m.steer_listen), bpf_map__fd(m.steer_stats)});
  }
  Program& prog() { return *prog_; }

  shunt::bpf::Owned<steer_netkit, steer_netkit__destroy> skel_;
  std::optional<Program> prog_;
};

TEST_F(NetkitProgram, MarksInterceptedTcpAndDropsDeniedTraffic) {
  prog().configure(0, {deny(4, "10.77.0.2", 32, "10.77.0.3", 32, 9091)});
  const Outcome intercepted = prog().run({});
  EXPECT_EQ(intercepted.verdict, kNext);
  EXPECT_EQ(intercepted.mark & SHUNT_STEER_MARK, SHUNT_STEER_MARK);
  EXPECT_EQ(prog().count(SHUNT_STAT_NETKIT_MARKED), 1u);

  const Outcome direct = prog().run({.dport = 9090});
  EXPECT_EQ(direct.verdict, kNext);
  EXPECT_EQ(direct.mark & SHUNT_STEER_MARK, 0u);

  EXPECT_EQ(prog().run({.dport = 9091}).verdict, kDrop);
  EXPECT_EQ(prog().count(SHUNT_STAT_DENY_DROP), 1u);
}

}  // namespace
