// `shunt pod add|del|list`: lab pods (pods/pod.h). Exit codes per SPEC.md:
// 1 for bad input (name, address, existing or unknown pod), 2 for the
// environment (privileges, kernel features, kernel refusals).
#include "pods/pod.h"
#include "cli/cli.h"

#include <CLI/CLI.hpp>

#include <boost/asio/ip/address.hpp>

#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

namespace shunt::cli {
namespace {

int exit_code_for(const SysError& e) {
  switch (e.code) {
    case EINVAL:
    case EEXIST:
    case ENOENT:
      return kExitBadInput;
    default:
      return kExitEnvironment;
  }
}

int fail(const SysError& e) {
  std::cerr << "shunt pod: " << e.message() << "\n";
  if (e.code == EPERM || e.code == EACCES)
    std::cerr << "shunt pod: run as root (needs CAP_NET_ADMIN and CAP_SYS_ADMIN)\n";
  return exit_code_for(e);
}

// "10.200.0.2/24" or "fd00:200::2/64" → address and prefix; the prefix is
// required so the pod's subnet is explicit.
std::optional<pods::PodAddress> parse_cidr(const std::string& text) {
  const auto slash = text.find('/');
  if (slash == std::string::npos) return std::nullopt;
  boost::system::error_code ec;
  auto addr = boost::asio::ip::make_address(text.substr(0, slash), ec);
  if (ec) return std::nullopt;
  const std::string len = text.substr(slash + 1);
  if (len.empty() || len.size() > 3 || len.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  const unsigned prefix = static_cast<unsigned>(std::stoul(len));
  if (prefix < 1 || prefix > (addr.is_v4() ? 32u : 128u)) return std::nullopt;
  return pods::PodAddress{addr, prefix};
}

std::string join_addresses(const std::vector<pods::PodAddress>& addresses) {
  std::string out;
  for (const auto& a : addresses) out += (out.empty() ? "" : ",") + pods::to_string(a);
  return out.empty() ? "-" : out;
}

}  // namespace

void add_pod_commands(CLI::App& app, int& exit_code) {
  CLI::App* pod = app.add_subcommand("pod", "Create, remove and list lab pods (netns + netkit or veth pair)");
  pod->require_subcommand(1);

  struct AddArgs {
    std::string name;
    std::vector<std::string> ips;
    std::string type;
  };
  auto add_args = std::make_shared<AddArgs>();
  CLI::App* add =
      pod->add_subcommand("add", "Create pod NAME: netns NAME, host device sh-NAME, address, routes");
  add->add_option("name", add_args->name, "Pod name (1-12 characters)")->required();
  // Repeatable, like a dual-stack pod's podIPs: at most one per family.
  add->add_option("--ip", add_args->ips,
                  "Pod address with prefix, A.B.C.D/NN or IPv6 ADDR/NN; give it twice for a dual-stack pod")
      ->required()
      ->allow_extra_args(false);
  add->add_option("--type", add_args->type, "Device type (default: netkit when the kernel has it, else veth)")
      ->check(CLI::IsMember({"netkit", "veth"}));
  add->callback([add_args, &exit_code] {
    pods::PodSpec spec;
    spec.name = add_args->name;
    for (const auto& text : add_args->ips) {
      auto cidr = parse_cidr(text);
      if (!cidr) {
        std::cerr << "shunt pod add: --ip '" << text
                  << "' is not an address with prefix (A.B.C.D/NN or IPv6 ADDR/NN)\n";
        exit_code = kExitBadInput;
        return;
      }
      spec.addresses.push_back(*cidr);
    }
    if (add_args->type == "netkit") spec.type = pods::DeviceType::netkit;
    if (add_args->type == "veth") spec.type = pods::DeviceType::veth;
    auto added = pods::add_pod(spec);
    if (!added) {
      exit_code = fail(added.error());
      return;
    }
    const auto& info = added->info;
    std::printf("pod %s: %s, address%s %s, host device %s (%s)\n", info.name.c_str(), info.type.c_str(),
                info.addresses.size() > 1 ? "es" : "", join_addresses(info.addresses).c_str(),
                info.host_device.c_str(), added->why.c_str());
    for (const auto& note : added->forwarding) std::printf("  %s\n", note.c_str());
    exit_code = kExitOk;
  });

  auto del_name = std::make_shared<std::string>();
  CLI::App* del = pod->add_subcommand("del", "Remove pod NAME and everything created for it");
  del->add_option("name", *del_name, "Pod name")->required();
  del->callback([del_name, &exit_code] {
    if (Status st = pods::del_pod(*del_name); !st) {
      exit_code = fail(st.error());
      return;
    }
    std::printf("pod %s removed\n", del_name->c_str());
    for (const auto& note : pods::restore_forwarding_if_no_pods())
      std::printf("  %s (the last pod is gone)\n", note.c_str());
    exit_code = kExitOk;
  });

  CLI::App* list = pod->add_subcommand("list", "List lab pods");
  list->callback([&exit_code] {
    auto pods_list = pods::list_pods();
    if (!pods_list) {
      exit_code = fail(pods_list.error());
      return;
    }
    std::printf("%-12s  %-6s  %-18s  %s\n", "NAME", "TYPE", "ADDRESS", "HOST-DEVICE");
    for (const auto& p : *pods_list) {
      std::printf("%-12s  %-6s  %-18s  %s\n", p.name.c_str(), p.type.c_str(),
                  join_addresses(p.addresses).c_str(), p.host_device.c_str());
    }
    exit_code = kExitOk;
  });
}

}  // namespace shunt::cli
