#include "bpf/features.h"
#include "cli/cli.h"

#include <bpf/libbpf.h>
#include <sys/utsname.h>
#include <CLI/CLI.hpp>

#include <cstdio>

namespace shunt::cli {

void add_version_command(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("version", "Versions and a kernel feature probe");
  cmd->callback([&exit_code] {
    utsname u{};
    ::uname(&u);
    std::printf("shunt %s\n", SHUNT_VERSION);
    std::printf("libbpf %s\n", libbpf_version_string());
    std::printf("kernel %s %s\n", u.release, u.machine);
    std::printf("features:\n");
    for (const auto& f : bpf::probe_features())
      std::printf("  %-20s %-4s %s\n", f.name.c_str(),
                  !f.probed     ? "?"
                  : f.available ? "yes"
                                : "no",
                  f.detail.c_str());
    exit_code = 0;
  });
}

}  // namespace shunt::cli
